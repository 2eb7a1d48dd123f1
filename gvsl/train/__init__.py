"""The training-run machinery that pre-training (``gvsl.pretrain``) and fine-tuning (``gvsl.finetune``) share.

``run``: the run folder and the lifecycle of a run (a ``Trainer`` subclass supplies its step and validation);
``config``: settings, config files and resume; ``device``: device, precision, kernel choices and peak memory;
``memory_plan`` and ``auto_batch``: what ``--batch auto`` chooses for a GPU's free memory; ``distributed``:
several processes; ``events``: the event log; ``state``: checkpoint files and seeds; ``stopping``: stop requests;
``panels``: image panels. Importing the package imports none of them (``gvsl --help`` stays light).
"""
