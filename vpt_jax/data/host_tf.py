"""TensorFlow as a host-only data reader: imported quietly, with every accelerator hidden from it.

JAX owns the accelerators and their memory: training and evaluation run there, and TensorFlow, used
only by tf.data and TFDS to read and decode on the host, would otherwise reserve most of each GPU's
memory when it starts. So the accelerators are hidden from it before it initialises its devices. Modules
that need TensorFlow import it from here (`from vpt_jax.data.host_tf import tf`), so the set-up runs
once and before any other TensorFlow use in this package.
"""

from __future__ import annotations

import logging

from vpt_jax.runtime import quiet_libraries

quiet_libraries()  # TensorFlow reads its log settings once, on import

import tensorflow as tf  # noqa: E402 - after quiet_libraries()

log = logging.getLogger(__name__)


def _hide_accelerators() -> None:
    for device_type in ("GPU", "TPU"):
        try:
            tf.config.set_visible_devices([], device_type)
        except RuntimeError:
            # TensorFlow initialised its devices elsewhere in this process before this module ran.
            log.warning(
                "TensorFlow already holds the %s devices; import vpt_jax.data.host_tf earlier",
                device_type,
            )
        except ValueError:
            pass  # no such device type in this TensorFlow build


_hide_accelerators()

__all__ = ["tf"]
