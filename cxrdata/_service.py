"""tf.data service helpers: hand a pipeline's preprocessing to remote workers.

The service is TensorFlow's own (`tf.data.experimental.service`): a dispatcher
and workers started with `DispatchServer` / `WorkerServer`, for example on CPU
hosts beside a GPU trainer. `cxrdata.load(..., service="grpc://host:port")`
applies `distribute` below to the expensive part of the pipeline.
"""

from __future__ import annotations

import tensorflow as tf

PROTOCOL = "grpc://"
MODES = ("distributed_epoch", "parallel_epochs")


def check_service(service: str | None, mode: str = "distributed_epoch") -> None:
    """Raises unless `service` is None or a dispatcher address `grpc://host:port`, and `mode` is known."""
    if mode not in MODES:
        raise ValueError(f"`service_mode` must be one of {MODES}. Received: service_mode={mode!r}")
    if service is None:
        return
    if not isinstance(service, str):
        raise TypeError(
            f"`service` must be a dispatcher address string such as 'grpc://host:5050', "
            f"or None. Received: service={service!r} of type {type(service).__name__}"
        )
    address = service[len(PROTOCOL) :] if service.startswith(PROTOCOL) else ""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(
            f"`service` must be a tf.data service dispatcher address of the form "
            f"'grpc://host:port'. Received: service={service!r}"
        )


def distribute(dataset: tf.data.Dataset, service: str, mode: str = "distributed_epoch") -> tf.data.Dataset:
    """Runs `dataset` on the service's workers; this process only receives its elements.

    `distributed_epoch`: the dispatcher hands the shard files out one at a
    time (dynamic sharding of the file list, the dataset's first source), so
    an epoch holds each record once whatever the number of workers; each
    worker batches what it read, so the caller rebatches. `parallel_epochs`:
    every worker produces the whole dataset, so with `n` workers each record
    comes `n` times per epoch (in different orders when unseeded). Each new
    iteration (a Keras epoch) starts a new anonymous job.
    """
    return dataset.apply(tf.data.experimental.service.distribute(processing_mode=mode, service=service))


def start_local_service(num_workers: int = 1):
    """Starts a dispatcher and `num_workers` workers on free loopback ports.

    For tests and single-host experiments. Keep the returned servers referenced
    while the service is in use; they stop when garbage collected.

    Returns:
        `(dispatcher, workers)`; pass `dispatcher.target` as `service`.
    """
    service = tf.data.experimental.service
    dispatcher = service.DispatchServer(service.DispatcherConfig(port=0))
    address = dispatcher.target[len(PROTOCOL) :]
    workers = [
        service.WorkerServer(service.WorkerConfig(dispatcher_address=address, port=0))
        for _ in range(num_workers)
    ]
    return dispatcher, workers
