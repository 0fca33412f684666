"""Models: configs, torch modules, the linear baseline, datasets and splits,
training, metrics, checkpoints and inference.

Flow: ``FeatureVector`` stream + closes -> :func:`models.dataset.build_dataset`
-> :func:`models.dataset.walk_forward_splits` / :func:`holdout_split` ->
:func:`models.training.train` -> :meth:`TrainResult.save` (sha256 for the
``ModelRegistryEvent``) -> :meth:`models.inference.Predictor.from_checkpoint`
-> :meth:`Predictor.predict_batch` -> :func:`models.inference.to_signals`.

Errors, by what the caller should do (none is worth retrying unchanged):

- :class:`~models.config.InvalidConfig` (``field``, ``reason``): a
  hyperparameter that cannot work; fail the job with the reason.
- :class:`~models.dataset.DatasetError`, :class:`~models.dataset.SplitError`:
  the data cannot make the requested samples/splits (mixed streams, gaps
  everywhere, too few rows).
- :class:`~models.training.TrainingDiverged`: NaN/inf loss; lower the lr.
- :class:`~models.checkpoint.ModelCheckpointError` and its subclass
  :class:`~models.checkpoint.CheckpointTampered` (hash mismatch, checked
  before any byte is deserialised): do not serve; alert.
- :class:`~models.inference.FeatureMismatch`: inputs from another feature
  set / window; the model cannot score them.
"""
