"""The pieces of the cross-modality report (its command is ``benchmarks/report.py``): the floors of each
task (``floors``), the verdicts on the white-box claims (``verdicts``), per-model results over seeds
(``results``), report.md and --compare (``render``), the children's live progress (``progress``) and the
measurement of given checkpoints (``checkpoints``, ``checkpoint_run``)."""
