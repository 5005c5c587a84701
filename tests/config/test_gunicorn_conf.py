"""gunicorn.conf.py, read by gunicorn from the working directory (the Dockerfile's /app)."""

import gc
import runpy
from pathlib import Path

import gunicorn.config

CONF = Path(__file__).resolve().parents[2] / "gunicorn.conf.py"


def test_gunicorn_loads_the_hook_from_the_working_directory():
    assert gunicorn.config.ConfigFile.default == "./gunicorn.conf.py"
    hooks = runpy.run_path(str(CONF))
    assert gunicorn.config.PostWorkerInit.validator(hooks["post_worker_init"])


def test_a_started_worker_keeps_start_up_objects_out_of_full_collections():
    hooks = runpy.run_path(str(CONF))
    gc.unfreeze()
    try:
        hooks["post_worker_init"](worker=None)
        assert gc.get_freeze_count() > 1000
    finally:
        gc.unfreeze()
