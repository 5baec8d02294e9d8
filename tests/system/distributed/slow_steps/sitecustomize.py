"""For test_launcher.py: on PYTHONPATH, makes every training step of a torchrun worker sleep
LMLAB_TEST_STEP_SLEEP seconds first: steps as slow as a real model's, without using the CPU."""
import os

if os.environ.get("LMLAB_TEST_STEP_SLEEP") and "TORCHELASTIC_RUN_ID" in os.environ:
    import time

    from lmlab.training.parts import TrainingParts

    _train_step, _seconds = TrainingParts.step, float(os.environ["LMLAB_TEST_STEP_SLEEP"])

    def _slow_step(*args, **kwargs):
        time.sleep(_seconds)
        return _train_step(*args, **kwargs)

    TrainingParts.step = _slow_step
