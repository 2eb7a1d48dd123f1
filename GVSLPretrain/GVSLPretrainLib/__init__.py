"""Logic of the GVSL modules that talks to MRML and runs the gvsl backend; imports no Qt and no torch.

``volumes`` (volume nodes ↔ SimpleITK, the LPS ↔ RAS boundary), ``transforms``
(transform nodes from a match), ``probe`` (linked point lists), ``match``
(``gvsl match`` inputs/outputs, display nodes, segmentation propagation),
``similarity_job`` (a script run in its own process: the probe's similarity map), ``runs`` (event files, run
folders, background processes), ``plots`` (loss chart), ``dicom_selection``
(series from the DICOM database, ``gvsl scan`` summary) and ``dependencies``
(what to pip-install inside Slicer). ``pipeline_check`` is the body of the modules' self-tests (sample heads from
``sample_job``, a script run in its own process, then pre-training and a match, each as the module runs it).
GVSLSegment imports the shared parts from here.
"""
