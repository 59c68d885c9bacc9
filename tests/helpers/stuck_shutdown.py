"""A callback for tests: a shutdown that never ends, as a W&B start or close that never returns would make.

When the fit ends by an exception it starts a non-daemon thread that sleeps for an hour: the interpreter
waits for such a thread before the process can exit."""

import threading
import time

import lightning as L


class NeverEndingThread(L.Callback):
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        threading.Thread(target=time.sleep, args=(3600,), name="never-ends", daemon=False).start()
