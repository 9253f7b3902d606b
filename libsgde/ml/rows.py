"""Row-keyed randomness for sampling: row r of a request comes from the key fold_in(key(seed), r) alone, so any split
of a request into chunks, or into batches of any size, gives the same rows. The sampler service, local sampling and
`Generator.sample` all draw their keys here."""

from __future__ import annotations

import jax
import jax.numpy as jnp

_U32 = 0xFFFFFFFF


def seed_key(seed: int) -> jax.Array:
    """The request's PRNG key from all 64 bits of `seed` (two's complement): key data [seed >> 32, seed & 2**32-1],
    what jax.random.key(seed) gives with 64-bit integers enabled, and the same as jax.random.key(seed) for seeds in
    [0, 2**31)."""
    seed = int(seed)
    key: jax.Array = jax.random.wrap_key_data(jnp.asarray([(seed >> 32) & _U32, seed & _U32], jnp.uint32))
    return key


def row_keys(key: jax.Array, first_row: jax.Array | int, n: int) -> jax.Array:
    """The keys of rows first_row .. first_row + n - 1 (row numbers are uint32)."""
    rows = first_row + jnp.arange(n, dtype=jnp.uint32)
    keys: jax.Array = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, rows)
    return keys
