"""Training of the learned mask networks (`scribblebox train`): clip generators, the CLR schedule, the stage loops.

Needs torch (`pip install -e '.[learned]'`); nothing here imports PyAV, so it runs on a bare GPU image too.
"""
