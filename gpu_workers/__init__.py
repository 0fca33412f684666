"""GPU workers: multi-process training (:mod:`gpu_workers.ddp`, torchrun
compatible); the job-topic training and streaming inference workers build on
:mod:`models.training` and :mod:`models.inference`."""
