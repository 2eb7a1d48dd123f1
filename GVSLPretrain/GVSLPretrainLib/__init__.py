"""Logic of the GVSLPretrain module that talks to MRML; imports no Qt and no torch.

``dicom_selection`` (series from the DICOM database, ``gvsl scan`` summary) and ``probe`` (linked point lists).
Volumes, transforms, run folders, processes, charts, ``gvsl match``, the backend's installation and the self-test
body come from ``GVSLSharedLib``, which both modules share.
"""
