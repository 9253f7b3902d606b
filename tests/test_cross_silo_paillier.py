"""Arm 6 of the cross-silo benchmark: Paillier-encrypted FedAvg (benchmarks/cross_silo/paillier.py).

Real phe keys throughout, but small ones (1024 bits, 512 for the cost path) so the file runs in seconds; the
benchmark itself uses 2048-bit keys."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from benchmarks.cross_silo import aggregate
from benchmarks.cross_silo import paillier as pl

KEY_BITS = 1024  # tests only; the benchmark's keys are 2048 bits


@pytest.fixture(scope="module")
def holder():
    return pl.KeyHolder(KEY_BITS)


def _round_trip(pk, per_client, encoding=pl.DEFAULT):
    """Clients' ciphertexts through the wire format, the aggregator's sum back through it."""
    received = [pl.deserialise(pk, pl.serialise(pk, cts)) for cts in per_client]
    return pl.deserialise(pk, pl.serialise(pk, pl.add_ciphertexts(pk, received, encoding)))


def test_the_decrypted_sum_of_signed_integers_is_the_plain_sum_exactly(holder):
    pk = holder.public_key
    rng = np.random.default_rng(0)
    clients = [[int(v) for v in rng.integers(-(2**62), 2**62, 40)] + [0, -1, 1] for _ in range(3)]
    ciphertexts = [pl.encrypt_signed(pk, values) for values in clients]
    assert pl.ciphertext_bytes(pk) == 2 * KEY_BITS // 8
    assert ciphertexts[0][-3:] != pl.encrypt_signed(pk, [0, -1, 1])  # randomised: equal plaintexts, new ciphertexts
    summed = _round_trip(pk, ciphertexts)
    assert pl.decrypt_signed(holder._private_key, summed) == [sum(col) for col in zip(*clients)]


def test_packing_round_trips_and_the_bounded_sum_of_packed_values_never_carries():
    enc = pl.Encoding(scale_bits=8, bound=2.0, max_count=100, max_clients=4)
    b, slots = enc.slot_bits, 7
    rng = np.random.default_rng(1)
    values = [int(v) for v in rng.integers(0, 2**b, 45)] + [0, 2**b - 1]
    packed = pl.pack(values, b, slots)
    assert len(packed) == 7  # ceil(47 / 7)
    assert pl.unpack(packed, b, slots, len(values)) == values

    # every client at the offset encoding's ceiling, 2 U max_count, in every slot: the sum of max_clients of them
    # fills the slot without carrying ...
    ceiling = [2 * enc.unit_bound * enc.max_count] * 20
    per_client = [pl.pack(ceiling, b, slots)] * enc.max_clients
    total = [sum(col) for col in zip(*per_client)]
    assert pl.unpack(total, b, slots, 20) == [enc.max_clients * ceiling[0]] * 20
    # ... while enough clients at the ceiling do carry into the next slot, which is why the aggregator refuses more
    # than max_clients (b rounds up to whole bits, so the first to carry may come a little later)
    carrying = -(-(2**b) // ceiling[0])
    assert carrying > enc.max_clients
    total = [sum(col) for col in zip(*[per_client[0]] * carrying)]
    assert pl.unpack(total, b, slots, 20) != [carrying * ceiling[0]] * 20


@pytest.mark.parametrize("packed", [False, True], ids=["unpacked", "packed"])
def test_fedavg_of_updates_on_the_fixed_point_grid_is_exact_with_negative_values(holder, packed):
    pk, enc = holder.public_key, pl.DEFAULT
    rng = np.random.default_rng(2)
    shapes = [(3, 4), (5,)]
    counts = [1, 250, 60000]
    # w = k / s exactly (k integer of both signs, within float32's 24-bit significand, and the bound U = 2^28
    # itself on both sides): then s n w = n k, so no rounding happens at all
    grid = [[rng.integers(-(2**24), 2**24 + 1, s) for s in shapes] for _ in counts]
    grid[0][0][0, 0], grid[1][0][0, 0] = -enc.unit_bound, enc.unit_bound
    updates = [[(k / enc.scale).astype(np.float32) for k in layers] for layers in grid]

    per_client = [pl.encrypt_update(pk, u, n, packed=packed, encoding=enc) for u, n in zip(updates, counts)]
    if packed:
        assert len(per_client[0]) == 1  # 17 weights and the count fill one 20-slot plaintext of a 1024-bit key
    sums, total = holder.decrypt_sums(_round_trip(pk, per_client), 17, packed=packed, encoding=enc)
    flat = [np.concatenate([k.ravel() for k in layers]) for layers in grid]
    assert total == sum(counts)
    assert sums == [int(sum(n * int(f[j]) for f, n in zip(flat, counts))) for j in range(17)]
    assert any(s < 0 for s in sums)

    average = holder.decrypt_average(_round_trip(pk, per_client), shapes, packed=packed, encoding=enc)
    expected = aggregate.fedavg(list(zip(updates, counts)))
    assert [a.shape for a in average] == shapes
    for got, want in zip(average, expected):
        np.testing.assert_array_equal(got, want)


def test_float_updates_sum_within_the_rounding_bound_and_both_variants_agree(holder):
    """Each client rounds s n_k w once (|e| <= 1/2), so |S/s - sum_k n_k w_k| <= K / (2 s) before dividing."""
    pk, enc = holder.public_key, pl.DEFAULT
    rng = np.random.default_rng(3)
    counts = [7, 301, 4095]
    updates = [
        [rng.normal(0.0, 0.02, (6, 5)).astype(np.float32), rng.normal(0.0, 0.1, 9).astype(np.float32)] for _ in counts
    ]
    num = 39
    results = {}
    for packed in (False, True):
        per_client = [pl.encrypt_update(pk, u, n, packed=packed, encoding=enc) for u, n in zip(updates, counts)]
        results[packed] = holder.decrypt_sums(_round_trip(pk, per_client), num, packed=packed, encoding=enc)
    assert results[False] == results[True]  # the same integers, however they were carried

    sums, total = results[True]
    flat = [np.concatenate([layer.ravel() for layer in u]) for u in updates]
    exact = [sum(Fraction(float(f[j])) * n for f, n in zip(flat, counts)) for j in range(num)]
    errors = [abs(Fraction(s, enc.scale) - e) for s, e in zip(sums, exact)]
    assert max(errors) <= Fraction(len(counts), 2 * enc.scale)
    # small weights (float32 values of |w| >= 1/2 lie on the 2^-24 grid): off the grid, so rounding really happens,
    # and it is to the nearest (each client's term within 1/2, not 1 as truncation would give)
    assert max(errors) > 0
    for u, n, f in zip(updates, counts, flat):
        rounding = [abs(q - Fraction(float(w)) * enc.scale * n) for q, w in zip(pl.quantise(u, n, enc), f)]
        assert Fraction(1, 4) < max(rounding) <= Fraction(1, 2)

    average = pl.secure_fedavg(updates, counts, packed=True, encoding=enc, key_holder=holder)
    for got, want in zip(average, aggregate.fedavg(list(zip(updates, counts)))):
        # both float32 roundings of averages at most K / (2 s N) apart
        np.testing.assert_allclose(got, want, rtol=2**-23, atol=len(counts) / (2 * enc.scale * total))


def test_bounds_are_refused_with_a_clear_error(holder):
    pk = holder.public_key
    enc = pl.Encoding(max_clients=2)
    ok = [np.full(4, 0.5, np.float32)]
    per_client = [pl.encrypt_update(pk, ok, 10, packed=True, encoding=enc) for _ in range(3)]
    with pytest.raises(ValueError, match="3 clients exceed the encoding's max_clients=2"):
        pl.add_ciphertexts(pk, per_client, enc)
    with pytest.raises(ValueError, match="exceeds the encoding's bound 16.0"):
        pl.encrypt_update(pk, [np.array([0.0, -16.5], np.float32)], 10, packed=True)
    with pytest.raises(ValueError, match="not finite"):
        pl.encrypt_update(pk, [np.array([np.nan], np.float32)], 10, packed=False)
    for count in (0, pl.DEFAULT.max_count + 1):
        with pytest.raises(ValueError, match="outside \\[1, max_count=65536\\]"):
            pl.quantise(ok, count)
    with pytest.raises(ValueError, match="outside \\[0, 2\\^8\\)"):
        pl.pack([1, 256], 8, 2)
    with pytest.raises(ValueError, match="> 2\\^53"):
        pl.Encoding(scale_bits=40, max_count=1 << 20)
    huge = pl.Encoding(max_clients=2**1000)  # a slot of 1046 bits: wider than the key's plaintexts
    with pytest.raises(ValueError, match="does not fit a 1024-bit key"):
        pl.encrypt_update(pk, ok, 10, packed=True, encoding=huge)
    with pytest.raises(ValueError, match="overflow a 1024-bit key"):
        pl.encrypt_update(pk, ok, 10, packed=False, encoding=huge)


@pytest.mark.parametrize("packed", [False, True], ids=["unpacked", "packed"])
def test_measure_reports_the_protocols_costs_and_extrapolates_linearly(packed):
    m = pl.measure(25, 2, key_bits=512, packed=packed, seed=0)
    slots = (511 // pl.DEFAULT.slot_bits) if packed else 1
    assert m["slots_per_ciphertext"] == slots
    assert m["ciphertexts_per_client"] == -(-26 // slots)
    assert m["ciphertext_bytes_per_client"] == m["ciphertexts_per_client"] * 128  # 1024-bit n^2
    assert m["plaintext_bytes_per_client"] == 100
    assert m["max_abs_error"] <= m["quantisation_bound"] + 2**-24 * 0.5
    assert all(m[k] > 0 for k in ("keygen_s", "encrypt_s_per_client", "aggregate_s", "decrypt_s"))

    same = pl.extrapolate(m, 25)
    assert same["encrypt_s_per_client"] == pytest.approx(m["encrypt_s_per_client"])
    assert same["ciphertext_bytes_per_client"] == m["ciphertext_bytes_per_client"]
    big = pl.extrapolate(m, 44_426, clients=10)
    assert big["ciphertexts_per_client"] == (-(-44_427 // slots))
    ratio = big["ciphertexts_per_client"] / m["ciphertexts_per_client"]
    assert big["encrypt_s_per_client"] == pytest.approx(m["encrypt_s_per_client"] * ratio)
    assert big["aggregate_s"] == pytest.approx(m["aggregate_s"] * ratio * 9)
    with pytest.raises(ValueError, match="max_clients"):
        pl.extrapolate(m, 100, clients=17)
