"""tf.data service helpers: hand a pipeline's reading and preprocessing to remote workers.

The service is TensorFlow's own (`tf.data.experimental.service`): a dispatcher
and workers started with `DispatchServer` / `WorkerServer`, for example on CPU
hosts beside a GPU trainer. `cxrdata.load(..., service="grpc://host:port")`
runs its pipeline there through `distribute_epochs` below.

Epochs. The service serializes a dataset's graph to its workers, and each
iteration of the client's dataset (each Keras epoch) starts a new job whose
workers build that graph afresh: a shuffle seeded inside it starts from the
same state every time, so every epoch would replay one order (and, with
`drop_remainder`, drop the same records). `distribute_epochs` therefore
draws one seed per iteration on the client, from a seeded stream that
advances each time the dataset is iterated (as a local shuffle's does), and
registers the pipeline built with that seed as the job of this epoch.

The same holds for an augmentation layer's random state: the service copies
the value its seed generators hold when the pipeline is registered, and the
workers would restart from it every epoch (batch `k` of each epoch drawing the
same transforms). `distribute_epochs` sets those states from the epoch's seed
before each registration, so the draws move on with the epochs too.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import tensorflow as tf

PROTOCOL = "grpc://"
MODES = ("distributed_epoch", "parallel_epochs")
DEFAULT_TIMEOUT = 60.0  # seconds `load` waits for a dispatcher before it raises


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


def wait_for_dispatcher(service: str, timeout: float) -> None:
    """Returns once the dispatcher at `service` accepts a connection; raises after `timeout` seconds.

    TensorFlow itself would retry for an hour: registering a dataset with an
    unreachable dispatcher blocks `load`, silently, for that long.

    Raises:
        ConnectionError: nothing answered at the address within `timeout`.
    """
    import grpc  # deferred with TensorFlow, which depends on it

    channel = grpc.insecure_channel(service[len(PROTOCOL) :])
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        raise ConnectionError(
            f"No tf.data service dispatcher answered at {service!r} within {timeout:g} s. Start one "
            f"(tf.data.experimental.service.DispatchServer) and its workers, or pass `service_timeout` "
            f"to wait longer."
        ) from None
    finally:
        channel.close()


def distribute_epochs(
    build: Callable[[tf.Tensor], tf.data.Dataset],
    service: str,
    mode: str,
    seed: int | None,
    states: Sequence = (),
) -> tf.data.Dataset:
    """Runs `build(epoch_seed)` on the service's workers, with a new seed each iteration.

    The seeds are a stream seeded with `seed` (None: different in every run)
    that advances each time the returned dataset is iterated, so the same
    `seed` gives the same sequence of epoch seeds. `distributed_epoch`: the
    dispatcher hands the pipeline's shard files out one at a time (dynamic
    sharding of its first source), so an epoch holds each record once whatever
    the number of workers; each worker batches what it read, so the caller
    rebatches. `parallel_epochs`: every worker produces the whole epoch, so
    with `n` workers each record comes `n` times. `states`: the seed-generator
    state variables (`[seed, counter]`) of what `build` draws from; each is set
    to `[epoch seed + i, 0]` before the epoch's pipeline is registered.
    """

    def epoch(epoch_seed: tf.Tensor) -> tf.data.Dataset:
        reseed = [
            state.assign(tf.cast(tf.stack([epoch_seed + i, 0]), state.dtype))
            for i, state in enumerate(states)
        ]
        with warnings.catch_warnings(), tf.control_dependencies(reseed):
            dataset = build(epoch_seed)
            # register_dataset reads the options of a dataset built in a graph (this function).
            warnings.filterwarnings("ignore", message="To make it possible to preserve tf.data options")
            dataset_id = tf.data.experimental.service.register_dataset(service, dataset)
        return tf.data.experimental.service.from_dataset_id(
            mode, service, dataset_id, element_spec=dataset.element_spec
        )

    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1)
    return seeds.map(lambda s: tf.math.floormod(s, 2**31 - 1)).flat_map(epoch)
