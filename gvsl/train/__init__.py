"""The training-run machinery that pre-training (``gvsl.pretrain``) and fine-tuning (``gvsl.finetune``) share.

``run``: the run folder and the lifecycle of a run (a ``Trainer`` subclass supplies its step and validation);
``config``: settings, config files and resume; ``device``: device, precision and peak memory; ``distributed``:
several processes; ``events``: the event log; ``state``: checkpoint files and seeds; ``stopping``: stop requests;
``panels``: image panels. Importing the package imports none of them (``gvsl --help`` stays light).
"""
