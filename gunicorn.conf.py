"""gunicorn settings read from the working directory (the Dockerfile's and the benchmarks')."""

import gc


def post_worker_init(worker):
    # Everything loaded at start-up (Django, the apps, their modules) lives as long as the
    # worker: keep it out of the collector's full passes, which otherwise stall a request.
    gc.freeze()
