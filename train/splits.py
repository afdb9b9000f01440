"""Held-out splits and cross-validation folds that keep every recording on one side.

A group is the recording (or sound class) clips were cut from (`Item.group`, the field manifest's
`group` column; the file itself otherwise).  Clips of one group are never on both sides of a split,
or a model would be scored on the recording it learnt.  Groups are stratified by (block, label) so
that every fold and every held-out set sees every kind of audio."""
from __future__ import annotations

import dataclasses
import random
from collections import defaultdict

from train.datasets import Item


def regroup(items: list[Item], runs: list[str]) -> list[Item]:
    """training.group_runs: for each "BLOCK:N", every group of BLOCK cut into runs of N consecutive
    files (by path), each run a group of its own."""
    size = {block: int(n) for block, _, n in (r.partition(":") for r in runs)}
    seen: dict[str, int] = defaultdict(int)
    run_of = {}
    for item in sorted((i for i in items if i.dataset in size), key=lambda i: str(i.path)):
        run_of[item.path] = seen[item.split_group] // size[item.dataset]
        seen[item.split_group] += 1
    # The items keep their order (training draws depend on it); only their groups change.
    return [dataclasses.replace(i, group=f"{i.split_group}#{run_of[i.path]}") if i.path in run_of else i for i in items]


def grouped_strata(items: list[Item], seed: int) -> list[list[list[Item]]]:
    """For each (block, label) stratum in a fixed order, its groups, shuffled with `seed`, largest
    first among equals so that round-robin dealing balances fold sizes."""
    groups: dict[str, list[Item]] = defaultdict(list)
    for item in sorted(items, key=lambda i: str(i.path)):
        groups[item.split_group].append(item)
    strata: dict[tuple, list[list[Item]]] = defaultdict(list)
    for key in sorted(groups):
        members = groups[key]
        strata[(members[0].dataset, members[0].label)].append(members)
    rng = random.Random(seed)
    out = []
    for key in sorted(strata):
        members = strata[key]
        rng.shuffle(members)
        members.sort(key=len, reverse=True)  # stable: equal sizes keep their shuffled order
        out.append(members)
    return out


def split_by_group(items: list[Item], val_fraction: float, seed: int) -> tuple[list[Item], list[Item]]:
    """About `val_fraction` of each stratum's clips held out, whole groups at a time (a stratum of a
    single group stays in training)."""
    train, val = [], []
    for groups in grouped_strata(items, seed):
        total = sum(len(g) for g in groups)
        want, taken = val_fraction * total, 0
        for i, group in enumerate(reversed(groups)):  # smallest groups first: closest to the fraction
            if i < len(groups) - 1 and taken + len(group) / 2 <= want:
                val += group
                taken += len(group)
            else:
                train += group
    return train, val


def k_folds(items: list[Item], k: int, seed: int) -> list[list[Item]]:
    """k folds of whole groups: each stratum's groups dealt to the currently smallest fold."""
    folds: list[list[Item]] = [[] for _ in range(k)]
    for groups in grouped_strata(items, seed):
        counts = [0] * k
        for group in groups:
            target = min(range(k), key=lambda f: (counts[f], len(folds[f])))
            folds[target] += group
            counts[target] += len(group)
    return folds
