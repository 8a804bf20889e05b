"""The judge's tracking step: the objects of each colour, followed over the frames (numpy only)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vtok.eval.judge_parts import Components


@dataclass
class Track:
    """One object followed over the frames it is seen in."""

    color: str
    t: np.ndarray
    """int [F]: frames it is seen in, increasing."""
    mass: np.ndarray
    """float [F]: its summed cover in each of those frames (see Components)."""
    area: np.ndarray
    """float [F]: the area it covers in each (see Components)."""
    x: np.ndarray
    """float [F]: its centroid in each, generator coordinates."""
    y: np.ndarray
    colour_sum: np.ndarray
    """float [3]: summed (pixel - background) over the whole track."""

    @property
    def frames_seen(self) -> int:
        return len(self.t)


def _merge(comps: Components, groups: list[list[int]], frames: list[int]) -> Track:
    """A track from, per frame, the components that make up the object there (summed: an occluder can
    split one object in two)."""
    mass = np.array([comps.mass[g].sum() for g in groups])
    return Track(
        color=comps.color,
        t=np.asarray(frames, np.int64),
        mass=mass,
        area=np.array([comps.area[g].sum() for g in groups]),
        x=np.array([np.dot(comps.mass[g], comps.x[g]) for g in groups]) / mass,
        y=np.array([np.dot(comps.mass[g], comps.y[g]) for g in groups]) / mass,
        colour_sum=comps.colour_sum[[i for g in groups for i in g]].sum(0),
    )


def _split(comps: Components, num_frames: int, count: int) -> list[Track]:
    """`count` objects of one colour, followed by nearest centroid from the first frame that shows them all."""
    by_frame = [np.flatnonzero(comps.frame == t).tolist() for t in range(num_frames)]
    start = next(t for t in range(num_frames) if len(by_frame[t]) == count)
    last = [np.array([comps.x[i], comps.y[i]]) for i in by_frame[start]]
    groups: list[dict[int, list[int]]] = [{} for _ in range(count)]
    for t, here in enumerate(by_frame):
        pairs = sorted((float(np.hypot(*(last[o] - [comps.x[i], comps.y[i]]))), o, i)
                       for o in range(count) for i in here)
        taken: dict[int, int] = {}
        for _, o, i in pairs:
            if o not in taken.values() and i not in taken:
                taken[i] = o
        for i in here:
            # A component left over when all objects have one is a fragment of the nearest.
            o = taken.get(i, min(range(count), key=lambda o: float(np.hypot(*(last[o] - [comps.x[i], comps.y[i]])))))
            groups[o].setdefault(t, []).append(i)
        for o in range(count):
            if t in groups[o]:
                g = groups[o][t]
                w = comps.mass[g]
                last[o] = np.array([np.dot(w, comps.x[g]), np.dot(w, comps.y[g])]) / w.sum()
    return [_merge(comps, list(g.values()), list(g)) for g in groups if g]


def tracks(found: list[Components], num_frames: int) -> list[Track]:
    """The objects of each colour, followed over the frames, in palette order."""
    out: list[Track] = []
    for comps in found:
        per_frame = np.bincount(comps.frame, minlength=num_frames)
        values, counts = np.unique(per_frame[per_frame > 0], return_counts=True)
        # The most common number of components in the frames that show the colour; ties go to fewer,
        # so an occluder splitting an object now and then does not make two.
        count = int(values[np.argmax(counts)])
        if count == 1:
            frames = np.flatnonzero(per_frame).tolist()
            out.append(_merge(comps, [np.flatnonzero(comps.frame == t).tolist() for t in frames], frames))
        else:
            out.extend(_split(comps, num_frames, count))
    return out
