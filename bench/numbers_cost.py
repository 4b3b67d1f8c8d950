"""What worker/numbers.py costs per row, on 1M realistic numbers (issue 18: ~2 us a row on the common path).

    .venv/bin/python -m bench.numbers_cost            # 1M numbers
    .venv/bin/python -m bench.numbers_cost --n 200000

The mix: 55% Chinese mobiles written nationally (13800000001), 15% with +86, 10% with 0086, 5% with 86
and no '+', 5% Chinese landlines with the trunk 0 (0755...), 6% US numbers (+1, 40 area codes), 4% other
countries (+44, +49, +81, +7, +61, +33). Default region CN. Each figure is the best of 3 runs over the same
list (a 2-core machine is noisy); ``plain phonenumbers`` (parse + is_possible + format) is timed on a
100k sample for comparison.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable

import phonenumbers

from worker import numbers

_US_AREAS = ["212", "213", "305", "312", "415", "503", "602", "617", "646", "702", "713", "718", "801", "808",
             "907", "206", "303", "404", "512", "615", "650", "202", "215", "314", "408", "504", "612", "702",
             "757", "773", "804", "813", "816", "843", "850", "919", "941", "954", "970", "971"]
_OTHER = ["+44 20 7946 0{:03d}", "+49 30 1234{:04d}", "+81 3 1234 {:04d}", "+7 912 345 {:04d}", "+61 2 9876 {:04d}",
          "+33 1 42 68 {:04d}"]


def realistic(n: int, seed: int = 18) -> list[str]:
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        mobile = "1" + rnd.choice("3456789") + f"{rnd.randrange(10**9):09d}"
        r = rnd.random()
        if r < 0.55:
            out.append(mobile)
        elif r < 0.70:
            out.append("+86" + mobile)
        elif r < 0.80:
            out.append("0086" + mobile)
        elif r < 0.85:
            out.append("86" + mobile)
        elif r < 0.90:
            out.append("0" + rnd.choice(["755", "571", "898", "20", "10"]) + f"{rnd.randrange(10**8):08d}")
        elif r < 0.96:
            out.append("+1" + rnd.choice(_US_AREAS) + f"{rnd.randrange(2, 10)}{rnd.randrange(10**6):06d}")
        else:
            out.append("".join(c for c in rnd.choice(_OTHER).format(rnd.randrange(1000)) if c in "+0123456789"))
    return out


def best_of(runs: int, fn: Callable[[], None]) -> float:
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--region", default="CN")
    args = ap.parse_args()
    region = args.region
    nums = realistic(args.n)
    numbers.number_key(nums[0], region)  # imports phonenumbers, loads metadata
    numbers.zones("+8613800000001")

    def keys() -> None:
        numbers._slow.cache_clear()
        for x in nums:
            try:
                numbers.number_key(x, region)
            except ValueError:  # a few random mobiles read as CN's carrier IDD (179xx00...): refused
                pass

    e164s: list[str | None] = []

    def keys_and_zones() -> None:
        numbers._slow.cache_clear()
        numbers._library_zones.cache_clear()
        e164s.clear()
        for x in nums:
            try:
                _key, e = numbers.key_and_e164(x, region)
            except ValueError:
                continue
            e164s.append(e)
            if e is not None:
                numbers.zone_for(e, "Asia/Shanghai")

    sample = nums[:100_000]

    def plain() -> None:
        for x in sample:
            try:
                num = phonenumbers.parse(x, region)
            except phonenumbers.NumberParseException:
                continue
            if phonenumbers.is_possible_number(num):
                phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164)

    keys()
    slow_share = numbers._slow.cache_info().misses / len(nums)
    t_key = best_of(3, keys)
    t_zone = best_of(3, keys_and_zones)
    t_plain = best_of(1, plain)
    print(f"{len(nums):,} numbers, default region {region}; {slow_share:.1%} went to phonenumbers (slow path)")
    print(f"number_key:                    {t_key / len(nums) * 1e6:.2f} us/row")
    print(f"key_and_e164 + zone_for:       {t_zone / len(nums) * 1e6:.2f} us/row  (--timezone auto)")
    print(f"plain phonenumbers (100k):     {t_plain / len(sample) * 1e6:.2f} us/row")


if __name__ == "__main__":
    main()
