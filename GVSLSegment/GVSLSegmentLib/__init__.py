"""Logic of the GVSLSegment module that talks to MRML and runs the gvsl backend; imports no Qt and no torch.

``training_data`` ((volume, segmentation) cases → ``gvsl finetune``'s folder, segments matched by name),
``results`` (label map + label table → segmentation node with names, colours, reference geometry, closed surface,
subject hierarchy place), ``finetuning`` (``gvsl finetune``/``gvsl segment`` command lines, chart curves) and
``pipeline_check`` (the self-test body: fine-tuning and segmentation of sample heads, as the module runs them).
Volumes, run folders, processes, charts and ``gvsl match`` come from ``GVSLSharedLib``.
"""
