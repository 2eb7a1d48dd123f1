"""What the two GVSL modules share, installed beside both; neither module imports the other.

Logic that talks to MRML and runs the gvsl backend, importing no Qt and no torch: ``volumes`` (volume nodes ↔
SimpleITK, the LPS ↔ RAS boundary), ``transforms`` (transform nodes from a match), ``match`` (``gvsl match`` inputs
and outputs, display nodes, segmentation propagation), ``label_maps`` (label maps with their table ↔ segmentation
nodes), ``samples`` (the sample data: written by the backend, loaded with named segments), ``runs`` (event files, run
folders, background processes), ``jobs`` (short jobs: unique work folders, Cancel, clean-up), ``devices`` (what
torch reports, asked in its own process), ``plots`` (loss charts), ``dependencies`` (what to install inside Slicer,
version ranges checked), ``similarity_job`` and ``sample_job`` (scripts run in their own process: the probe's
similarity map, the sample data), ``terminology`` (label table codes → segment terminology) and ``pipeline_check``
(the body of the modules' self-tests: sample heads, pre-training and a match, each as the module runs it).

``module_base`` is the modules' own base (it imports Qt and Slicer's scripted-module classes): the run-control
mixin of the widgets, the short jobs' controls, the device combo box, the backend check, the sample data
registration, the logic base and the self-test runner.
"""
