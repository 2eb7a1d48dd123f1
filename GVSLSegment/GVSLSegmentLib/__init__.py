"""Logic of the GVSLSegment module that talks to MRML and runs the gvsl backend; imports no Qt and no torch.

``training_data`` ((volume, segmentation) cases → ``gvsl finetune``'s folder, segments matched by name),
``results`` (``gvsl segment`` on a volume node in the background; a volume from the DICOM database as its
series, with a DICOM SEG that references it), ``finetuning`` (``gvsl finetune``/``gvsl segment`` command lines,
chart curves) and ``pipeline_check`` (the self-test body: fine-tuning and segmentation of sample heads, as the
module runs them).
Volumes, label maps ↔ segmentation nodes (names, colours, terminology), run folders, processes, charts and
``gvsl match`` come from ``GVSLSharedLib``.
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
