"""Training: built-in estimators, the torch train loop, runners, the retrain job.

* :mod:`~lifelong_ray.training.estimators` — ``build_module``, ``predict_proba``
* :mod:`~lifelong_ray.training.loop` — ``train_loop_per_worker`` (Ray Train), ``fit_numpy``
* :mod:`~lifelong_ray.training.runner` — ``train(window, cfg, seed) -> TrainedModel``
* :mod:`~lifelong_ray.training.retrain` — ``run_retrain``, ``retrain_task`` (Ray task)

Nothing is imported here: the registry imports ``training.estimators`` and the retrain
job imports the registry, and importing the package must not need Ray.
"""
