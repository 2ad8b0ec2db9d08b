"""The project's benchmarks: speed, memory and layer-wise measurements, and the cross-modality report.

Each benchmark is a module with a ``main``: ``uv run benchmarks/NAME.py`` or ``python -m benchmarks.NAME``.
``harness`` holds what they share (constants, model building, synthetic inputs, timing, memory);
``reporting`` holds the pieces of the cross-modality report whose command is ``report``.
"""
