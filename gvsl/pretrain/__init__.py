"""Pre-training GVSL on unlabeled scans (``gvsl pretrain``): pairs of cached scans, the GVSL step and loss, and
synthetic pairs; the run itself is ``gvsl.train``'s."""
