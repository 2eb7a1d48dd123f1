"""Logic of the GVSLPretrain module that talks to MRML; imports no Qt and no torch.

``dicom_selection`` (series from the DICOM database, ``gvsl scan`` summary), ``probe`` (linked point lists) and
``presets`` (the pre-training presets: full, quick look).
Volumes, transforms, run folders, processes, charts, ``gvsl match``, the backend's installation and the self-test
body come from ``GVSLSharedLib``, which both modules share.
"""
import os
import sys

# In a source checkout loaded through Slicer's "Additional module paths" the shared package lies in ../GVSLShared,
# which holds no module and so is not on the path; installed, it lies beside this package and nothing is added.
# (Both modules import their own Lib package before GVSLSharedLib.)
_CHECKOUT_SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                "GVSLShared")
if os.path.isdir(os.path.join(_CHECKOUT_SHARED, "GVSLSharedLib")) and _CHECKOUT_SHARED not in sys.path:
    sys.path.append(_CHECKOUT_SHARED)
