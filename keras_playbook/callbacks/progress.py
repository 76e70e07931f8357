"""One progress bar over all the steps of a stage, however many epochs it uses."""

import keras

from keras_playbook import _validation as validation
from keras_playbook._loss_key import find_loss
from keras_playbook.callbacks._config import ConfigurableCallback


class StepProgress(ConfigurableCallback):
    """Shows one `keras.utils.Progbar` across every epoch of a `fit`.

    Keras's own `verbose=1` prints one bar per epoch; stages that train in
    many short epochs (a pass over a small sample each) use this instead.

    Args:
        total_steps: Steps the bar counts up to (the stage's budget).
        title: Printed once before the bar.

    Example:

    ```python
    model.fit(x, y, epochs=50, verbose=0,
              callbacks=[StepProgress(total_steps=50 * steps_per_epoch)])
    ```
    """

    def __init__(self, total_steps, title=None):
        super().__init__()
        validation.check_int(total_steps, "total_steps")
        self.total_steps = total_steps
        self.title = title
        self._progbar = None
        self._seen = 0

    def on_train_begin(self, logs=None):
        if self.title:
            print(self.title)
        # No value averaged by the bar: the loss in the logs is already Keras's running mean.
        self._progbar = keras.utils.Progbar(self.total_steps, unit_name="step", stateless_metrics=())
        self._seen = 0

    def on_train_batch_end(self, batch, logs=None):
        self._seen += 1
        found = find_loss(logs)  # "loss", or e.g. "total_loss" for a model whose own train_step reports it.
        values = [(found[0], float(found[1]))] if found else None
        self._progbar.update(min(self._seen, self.total_steps), values=values)

    def on_train_end(self, logs=None):
        if self._seen < self.total_steps:  # Stopped early: close the bar.
            self._progbar.update(self._seen, finalize=True)

    def get_config(self):
        return {"total_steps": self.total_steps, "title": self.title}
