"""Running the batch commands on a Ray cluster (``infer --ray``, ``evaluate --ray``).

Ray is an optional extra (``pip install 'retinamask[ray]'``) and imported only by the
modules of this package, when a Ray run starts:

* :mod:`.cluster`: connecting to a cluster (or starting a local instance);
* :mod:`.ray_infer`: :func:`~.ray_infer.run_inference_on_ray`, ``run_inference`` on Ray Data;
* :mod:`.ray_evaluate`: :func:`~.ray_evaluate.evaluate_outputs_on_ray`, the same for ``evaluate_outputs``.
"""
