"""Arm 6: FedAvg whose server step runs on Paillier ciphertexts (python-paillier, PyPI `phe`; gmpy2 for speed).

Protocol (honest-but-curious parties; the aggregator and the key holder do not collude):
1. A key holder, a party the silos trust only to decrypt the final sum (not the aggregator; it never receives an
   individual update), makes a Paillier key pair (n = pq, 2048 bits: about 112-bit security, NIST SP 800-57) and
   gives the public key n to the clients.
2. Client k quantises its example-weighted update to fixed point, x_kj = round(s * n_k * w_kj) with s = 2^scale_bits,
   after checking |w_kj| <= B and 1 <= n_k <= max_count (public bounds, fixed before any update exists), and
   encrypts EVERY weight, plus its count n_k, with the public key: c = (1 + n)^m r^n mod n^2, r random.
   It quantises the product n_k * w rather than w then multiplies, so one rounding (|e| <= 1/2) falls on each
   weighted term; the count travels encrypted as one more value, so the aggregator learns neither the weights nor
   the silo's size, and the key holder learns only the total N = sum n_k, which it needs for the average.
3. The aggregator multiplies the ciphertexts mod n^2, which adds the plaintexts: prod_k c_kj = E(sum_k m_kj), and
   sends the encrypted sums to the key holder; it refuses more than max_clients clients (the bound below).
4. The key holder decrypts S_j = sum_k x_kj and N and returns only the average S_j / (s N).
The aggregator sees ciphertexts only (and K, and their sizes); the key holder sees the sum only. The assumption
matters: the key holder cannot tell a sum from one client's forwarded ciphertexts, so an aggregator that colludes
with it, or lies to it, learns an individual update.
Error: sum_k x_kj = s sum_k n_k w_kj + e_j with |e_j| <= K/2, so |S_j/s - sum_k n_k w_kj| <= K/(2s) before dividing
and <= K/(2sN) after. The rounding is the only error for float32 updates (the model's dtype): s * n_k * w is then
exact in float64 (24-bit significand times a count below 2^29, s a power of two).

Overflow. Per client |x_kj| <= U n_k with U = ceil(s B), so the sum is bounded by U * max_count * max_clients.
- Unpacked: one ciphertext per weight, m = x mod n (negatives wrap); the sum is read back as signed, correct while
  U * max_count * max_clients < n/2 (checked against the key).
- Packed: offset encoding, m_kj = x_kj + U n_k in [0, 2 U n_k] (the count slot carries n_k, no offset), so a
  client's slot is non-negative and K <= max_clients clients' slot sum stays below 2^b with
  b = bitlen(2 U max_count max_clients): no carry crosses into the next slot. floor((bitlen(n) - 1) / b) slots go
  in one plaintext (slot i at bits [i b, (i+1) b)), which stays below n. The key holder subtracts U N per weight.
  With the defaults (s = 2^24, B = 16, max_count = 2^16, max_clients = 16) b = 50: 40 slots per 2048-bit key, so
  40 times fewer ciphertexts, encryptions and bytes.

Wire format: each ciphertext (< n^2) as a fixed-width big-endian integer of ceil(bitlen(n^2) / 8) bytes (512 for a
2048-bit key), concatenated. Encryption uses phe's raw integer API (`raw_encrypt`/`raw_decrypt`, our own fixed
point): per ciphertext it costs what `encrypt(float)` costs (both are dominated by r^n mod n^2; `phe_api_costs`
measures both), but it can pack, and its sums are plain products mod n^2, where EncryptedNumbers of different
exponents first raise one side to a power of 16 to align them.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
from phe import paillier, util


@dataclass(frozen=True)
class Encoding:
    """The public fixed-point parameters every party agrees on before a round."""

    scale_bits: int = 24  # s = 2^24: |error| <= K/(2 s N) on the average, below float32's resolution near 1
    bound: float = 16.0  # |w| <= B; a larger value is refused, never clipped (initial weights: |w| <= 1/sqrt(8))
    max_count: int = 1 << 16  # a silo's examples; Fashion-MNIST's whole training set (60,000) fits
    max_clients: int = 16  # the benchmark's 10 silos fit

    def __post_init__(self):
        if self.scale_bits < 0 or self.bound <= 0 or self.max_count < 1 or self.max_clients < 1:
            raise ValueError(f"invalid encoding {self}")
        if self.unit_bound * self.max_count > 2**53:  # quantised values stay exact float64 integers
            raise ValueError(f"scale 2^{self.scale_bits} x bound {self.bound} x max_count {self.max_count} > 2^53")

    @property
    def scale(self) -> int:
        return 1 << self.scale_bits

    @property
    def unit_bound(self) -> int:
        """U = ceil(s B): |round(s n w)| <= U n whenever |w| <= B."""
        return math.ceil(self.scale * self.bound)

    @property
    def sum_bound(self) -> int:
        """The largest |sum_k x_kj| the unpacked variant must represent."""
        return self.unit_bound * self.max_count * self.max_clients

    @property
    def slot_bits(self) -> int:
        """b: a packed slot holds max_clients offset values in [0, 2 U max_count] without a carry."""
        return (2 * self.sum_bound).bit_length()

    def slots(self, public_key: paillier.PaillierPublicKey) -> int:
        """Slots per plaintext for this key; refuses a key too small for the bounds."""
        slots = (public_key.n.bit_length() - 1) // self.slot_bits
        if slots < 1:
            raise ValueError(f"a {self.slot_bits}-bit slot does not fit a {public_key.n.bit_length()}-bit key")
        return slots

    def check_unpacked(self, public_key: paillier.PaillierPublicKey) -> None:
        if 2 * self.sum_bound >= public_key.n:
            raise ValueError(
                f"sums up to {self.sum_bound} (max_clients {self.max_clients}) overflow a "
                f"{public_key.n.bit_length()}-bit key"
            )


DEFAULT = Encoding()


# --- integers: signed values, packing, ciphertexts on the wire ---


def encrypt_signed(public_key: paillier.PaillierPublicKey, values: list[int]) -> list[int]:
    """E(v mod n) for each v; |v| < n/2 (negatives wrap to n - |v|)."""
    half = public_key.n // 2
    if any(abs(v) >= half for v in values):
        raise ValueError("a value does not fit the key's signed range (|v| < n/2)")
    return [public_key.raw_encrypt(v % public_key.n) for v in values]


def decrypt_signed(private_key: paillier.PaillierPrivateKey, ciphertexts: list[int]) -> list[int]:
    """D(c) read back into (-n/2, n/2]."""
    n = private_key.public_key.n
    out = []
    for c in ciphertexts:
        m = private_key.raw_decrypt(c)
        out.append(m - n if m > n // 2 else m)
    return out


def pack(values: list[int], slot_bits: int, slots: int) -> list[int]:
    """Groups of `slots` values v_i in [0, 2^b) as sum_i v_i 2^(i b); the last group may be short."""
    top = 1 << slot_bits
    if any(v < 0 or v >= top for v in values):
        raise ValueError(f"a packed value lies outside [0, 2^{slot_bits})")
    return [
        sum(v << (i * slot_bits) for i, v in enumerate(values[start : start + slots]))
        for start in range(0, len(values), slots)
    ]


def unpack(plaintexts: list[int], slot_bits: int, slots: int, length: int) -> list[int]:
    """The inverse of `pack`: the first `length` slots."""
    mask = (1 << slot_bits) - 1
    out = [(p >> (i * slot_bits)) & mask for p in plaintexts for i in range(slots)]
    return out[:length]


def ciphertext_bytes(public_key: paillier.PaillierPublicKey) -> int:
    return (public_key.nsquare.bit_length() + 7) // 8


def serialise(public_key: paillier.PaillierPublicKey, ciphertexts: list[int]) -> bytes:
    width = ciphertext_bytes(public_key)
    return b"".join(c.to_bytes(width, "big") for c in ciphertexts)


def deserialise(public_key: paillier.PaillierPublicKey, data: bytes) -> list[int]:
    width = ciphertext_bytes(public_key)
    if len(data) % width:
        raise ValueError(f"{len(data)} bytes is not a whole number of {width}-byte ciphertexts")
    return [int.from_bytes(data[i : i + width], "big") for i in range(0, len(data), width)]


def add_ciphertexts(
    public_key: paillier.PaillierPublicKey, per_client: list[list[int]], encoding: Encoding = DEFAULT
) -> list[int]:
    """The aggregator's step: prod_k c_kj mod n^2 = E(sum_k m_kj), for at most encoding.max_clients clients."""
    if not per_client:
        raise ValueError("no client ciphertexts to add")
    if len(per_client) > encoding.max_clients:
        raise ValueError(
            f"{len(per_client)} clients exceed the encoding's max_clients={encoding.max_clients}: their sum could "
            "overflow the plaintext (unpacked) or carry between slots (packed)"
        )
    if len({len(c) for c in per_client}) != 1:
        raise ValueError("clients sent different numbers of ciphertexts")
    nsquare = public_key.nsquare
    total = list(per_client[0])
    for cts in per_client[1:]:
        total = [util.mulmod(a, b, nsquare) for a, b in zip(total, cts)]
    return total


# --- FedAvg on top: the client's and the key holder's steps ---


def quantise(layers: list[np.ndarray], count: int, encoding: Encoding = DEFAULT) -> list[int]:
    """x_j = round(s n w_j) over the flattened layers; refuses |w| > B, non-finite w and counts outside bounds."""
    if not 1 <= count <= encoding.max_count:
        raise ValueError(f"count {count} outside [1, max_count={encoding.max_count}]")
    flat = np.concatenate([np.asarray(layer, np.float64).ravel() for layer in layers])
    if not np.all(np.isfinite(flat)) or np.max(np.abs(flat), initial=0.0) > encoding.bound:
        raise ValueError(f"an update value is not finite or exceeds the encoding's bound {encoding.bound}")
    return np.rint(flat * (encoding.scale * count)).astype(np.int64).tolist()


def encrypt_update(
    public_key: paillier.PaillierPublicKey,
    layers: list[np.ndarray],
    count: int,
    *,
    packed: bool,
    encoding: Encoding = DEFAULT,
) -> list[int]:
    """A client's message: the ciphertexts of its quantised weighted weights followed by its count."""
    values = quantise(layers, count, encoding)
    if not packed:
        encoding.check_unpacked(public_key)
        return encrypt_signed(public_key, [*values, count])
    offset = encoding.unit_bound * count
    plaintexts = pack([v + offset for v in values] + [count], encoding.slot_bits, encoding.slots(public_key))
    return [public_key.raw_encrypt(p) for p in plaintexts]


class KeyHolder:
    """Holds the private key; decrypts only the aggregator's sums and returns (sums, N) or the average."""

    def __init__(self, key_bits: int = 2048):
        self.public_key, self._private_key = paillier.generate_paillier_keypair(n_length=key_bits)

    def decrypt_sums(
        self, summed: list[int], num_params: int, *, packed: bool, encoding: Encoding = DEFAULT
    ) -> tuple[list[int], int]:
        """(S_j = sum_k round(s n_k w_kj) for j < num_params, N = sum_k n_k), exact integers."""
        if not packed:
            *sums, total = decrypt_signed(self._private_key, summed)
        else:
            plaintexts = [self._private_key.raw_decrypt(c) for c in summed]
            *shifted, total = unpack(plaintexts, encoding.slot_bits, encoding.slots(self.public_key), num_params + 1)
            sums = [v - encoding.unit_bound * total for v in shifted]
        if len(sums) != num_params or not 1 <= total <= encoding.max_count * encoding.max_clients:
            raise ValueError("the decrypted sum is malformed or overflowed (wrong length or count)")
        return sums, total

    def decrypt_average(
        self, summed: list[int], shapes: list[tuple[int, ...]], *, packed: bool, encoding: Encoding = DEFAULT
    ) -> list[np.ndarray]:
        """S_j / (s N) in the layers' shapes, float32 as `aggregate.fedavg` returns."""
        sizes = [math.prod(s) for s in shapes]
        sums, total = self.decrypt_sums(summed, sum(sizes), packed=packed, encoding=encoding)
        flat = np.array(sums, np.float64) / (encoding.scale * total)
        pieces = np.split(flat, np.cumsum(sizes)[:-1])
        return [p.reshape(s).astype(np.float32) for p, s in zip(pieces, shapes)]


def secure_fedavg(
    updates: list[list[np.ndarray]],
    counts: list[int],
    *,
    packed: bool,
    key_bits: int = 2048,
    encoding: Encoding = DEFAULT,
    key_holder: KeyHolder | None = None,
) -> list[np.ndarray]:
    """sum_k n_k w_k / sum_k n_k through the whole protocol, every message serialised as it would travel.

    Pass a `key_holder` to reuse one key pair across rounds (key_bits is then ignored)."""
    if len(updates) != len(counts):
        raise ValueError("one count per client update")
    holder = key_holder or KeyHolder(key_bits)
    pk = holder.public_key
    uploads = [
        serialise(pk, encrypt_update(pk, u, n, packed=packed, encoding=encoding)) for u, n in zip(updates, counts)
    ]
    summed = serialise(pk, add_ciphertexts(pk, [deserialise(pk, b) for b in uploads], encoding))
    shapes = [np.shape(layer) for layer in updates[0]]
    return holder.decrypt_average(deserialise(pk, summed), shapes, packed=packed, encoding=encoding)


# --- costs ---


def ciphertexts_per_client(num_params: int, *, packed: bool, slots: int) -> int:
    """The weights plus the count, one per ciphertext or `slots` per ciphertext."""
    return math.ceil((num_params + 1) / slots) if packed else num_params + 1


def measure(
    num_params_small: int,
    clients: int,
    *,
    key_bits: int = 2048,
    packed: bool,
    seed: int,
    encoding: Encoding = DEFAULT,
) -> dict:
    """One round of the protocol on random float32 updates (N(0, 0.05^2), one layer), timed part by part in CPU
    seconds (`time.process_time`: the work is single-threaded arithmetic without I/O, so this is the wall time of an
    unloaded core, and other processes on a shared machine do not inflate it). Also checks the result against the
    plain weighted mean and the bound."""
    if clients < 2:
        raise ValueError("measure at least two clients, so the aggregation has something to add")
    rng = np.random.default_rng(seed)
    updates = [[rng.normal(0.0, 0.05, num_params_small).astype(np.float32)] for _ in range(clients)]
    counts = [int(n) for n in rng.integers(1000, 6001, clients)]  # about a tenth of Fashion-MNIST each

    start = time.process_time()
    holder = KeyHolder(key_bits)
    keygen_s = time.process_time() - start
    pk = holder.public_key

    uploads, encrypt_s = [], []
    for update, count in zip(updates, counts):
        start = time.process_time()
        uploads.append(serialise(pk, encrypt_update(pk, update, count, packed=packed, encoding=encoding)))
        encrypt_s.append(time.process_time() - start)

    start = time.process_time()
    summed = serialise(pk, add_ciphertexts(pk, [deserialise(pk, b) for b in uploads], encoding))
    aggregate_s = time.process_time() - start

    start = time.process_time()
    (average,) = holder.decrypt_average(
        deserialise(pk, summed), [(num_params_small,)], packed=packed, encoding=encoding
    )
    decrypt_s = time.process_time() - start

    exact = sum(n * u[0].astype(np.float64) for u, n in zip(updates, counts)) / sum(counts)
    return {
        "num_params": num_params_small,
        "clients": clients,
        "key_bits": key_bits,
        "packed": packed,
        "seed": seed,
        "encoding": asdict(encoding),
        "gmpy2": util.HAVE_GMP,
        "clock": "process_time",
        "slot_bits": encoding.slot_bits if packed else None,
        "slots_per_ciphertext": encoding.slots(pk) if packed else 1,
        "ciphertexts_per_client": len(uploads[0]) // ciphertext_bytes(pk),
        "ciphertext_width_bytes": ciphertext_bytes(pk),
        "keygen_s": keygen_s,
        "encrypt_s_per_client": float(np.mean(encrypt_s)),
        "encrypt_s_each": encrypt_s,
        "ciphertext_bytes_per_client": len(uploads[0]),
        "plaintext_bytes_per_client": 4 * num_params_small,  # the float32 weights plain FedAvg ships
        "aggregate_s": aggregate_s,
        "decrypt_s": decrypt_s,
        # the returned float32 adds its own rounding (2^-24 relative) to the K/(2sN) quantisation bound
        "max_abs_error": float(np.max(np.abs(average - exact))),
        "quantisation_bound": clients / (2 * encoding.scale * sum(counts)),
    }


def extrapolate(measured: dict, num_params: int, clients: int | None = None) -> dict:
    """`measured` scaled to another model size (and client count), linear in the number of ciphertexts: encryption
    and decryption per ciphertext, aggregation per ciphertext and added client (K - 1 products), bytes exact."""
    k0, k = measured["clients"], clients or measured["clients"]
    if k > measured["encoding"]["max_clients"]:
        raise ValueError(f"{k} clients exceed the measured encoding's max_clients")
    slots = measured["slots_per_ciphertext"]
    count = ciphertexts_per_client(num_params, packed=measured["packed"], slots=slots)
    ratio = count / measured["ciphertexts_per_client"]
    encrypt_s = measured["encrypt_s_per_client"] * ratio
    aggregate_s = measured["aggregate_s"] * ratio * (k - 1) / (k0 - 1)
    decrypt_s = measured["decrypt_s"] * ratio
    cipher = count * measured["ciphertext_width_bytes"]
    return {
        "num_params": num_params,
        "clients": k,
        "key_bits": measured["key_bits"],
        "packed": measured["packed"],
        "ciphertexts_per_client": count,
        "keygen_s": measured["keygen_s"],  # once per federation, not per round
        "encrypt_s_per_client": encrypt_s,
        "ciphertext_bytes_per_client": cipher,
        "plaintext_bytes_per_client": 4 * num_params,
        "expansion": cipher / (4 * num_params),
        "aggregate_s": aggregate_s,
        "decrypt_s": decrypt_s,
        # a round's added latency, the clients encrypting in parallel
        "round_s": encrypt_s + aggregate_s + decrypt_s,
    }


def phe_api_costs(count: int = 20, *, key_bits: int = 2048, seed: int = 0) -> dict:
    """CPU seconds per value: phe's float API (`encrypt`, EncryptedNumber `+`, `decrypt`) against the raw integer API
    this module uses, on `count` N(0, 0.05^2) weights (different float exponents, as trained weights have)."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(0.0, 0.05, count).tolist()
    ints = [round(w * DEFAULT.scale * 4000) for w in weights]
    pk, sk = paillier.generate_paillier_keypair(n_length=key_bits)

    def per_value(fn):
        start = time.process_time()
        out = fn()
        return out, (time.process_time() - start) / count

    floats, float_encrypt = per_value(lambda: [pk.encrypt(w) for w in weights])
    raws, raw_encrypt = per_value(lambda: encrypt_signed(pk, ints))
    _, float_add = per_value(lambda: [a + b for a, b in zip(floats, reversed(floats))])
    _, raw_add = per_value(lambda: add_ciphertexts(pk, [raws, raws[::-1]], DEFAULT))
    _, float_decrypt = per_value(lambda: [sk.decrypt(c) for c in floats])
    _, raw_decrypt = per_value(lambda: decrypt_signed(sk, raws))
    return {
        "key_bits": key_bits,
        "gmpy2": util.HAVE_GMP,
        "float_encrypt_s": float_encrypt,
        "raw_encrypt_s": raw_encrypt,
        "float_add_s": float_add,
        "raw_add_s": raw_add,
        "float_decrypt_s": float_decrypt,
        "raw_decrypt_s": raw_decrypt,
        "float_exponents": sorted({c.exponent for c in floats}),
    }


def main() -> None:
    """python -m benchmarks.cross_silo.paillier: the arm's costs at 2048 bits, measured and extrapolated."""
    import argparse
    import json

    from benchmarks import utility
    from benchmarks.cross_silo.model import ModelSpec

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--params", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--to-clients", type=int, default=10)
    parser.add_argument("--key-bits", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    compas_inputs = utility.encoder_for(utility.compas_schema()).space.shape
    targets = {
        "fashion-mnist cnn": ModelSpec("cnn", (28, 28, 1), 10).size(),
        "compas mlp": ModelSpec("mlp", tuple(compas_inputs), 2).size(),
    }
    report = {"api": phe_api_costs(key_bits=args.key_bits, seed=args.seed)}
    for packed in (False, True):
        m = measure(args.params, args.clients, key_bits=args.key_bits, packed=packed, seed=args.seed)
        name = "packed" if packed else "unpacked"
        report[name] = {"measured": m} | {t: extrapolate(m, size, args.to_clients) for t, size in targets.items()}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
