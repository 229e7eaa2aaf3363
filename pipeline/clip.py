"""`Clip`, one continuous recording at its native frame rate, and the names it is checked against (splits, label
kinds): the one home of what the dataset readers (pipeline/sources) yield and the decoder (pipeline/decode) reads.

A clip is either an image sequence (`frame_paths`, one file per native frame) or one video file decoded in
order (`video`). Labels, where a dataset has them, are attached to native frame indices.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SPLITS = ("train", "val", "test")
LABEL_KINDS = ("segmentation", "depth")


@dataclass(frozen=True)
class Clip:
    """One recording. `labels` maps a native frame index to {"segmentation": path, "depth": path}.

    `labels` is excluded from the hash (a dict is unhashable) but included in equality, so clips can be
    dict keys and set members; treat it as read-only.
    """

    dataset: str
    split: str
    clip_id: str
    fps: float
    num_frames: int
    frame_paths: tuple[str, ...] = ()
    video: str = ""
    labels: dict[int, dict[str, str]] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "frame_paths", tuple(str(p) for p in self.frame_paths))
        object.__setattr__(self, "video", str(self.video))
        object.__setattr__(self, "labels", {int(i): {str(k): str(v) for k, v in d.items()} for i, d in self.labels.items()})
        where = f"clip {self.dataset}/{self.clip_id}"
        if self.split not in SPLITS:
            raise ValueError(f"{where}: split {self.split!r} must be one of {SPLITS}")
        if bool(self.frame_paths) == bool(self.video):
            raise ValueError(f"{where}: give exactly one of frame_paths (image sequence) or video (one file)")
        if self.frame_paths and self.num_frames != len(self.frame_paths):
            raise ValueError(f"{where}: num_frames={self.num_frames} but {len(self.frame_paths)} frame paths")
        if self.num_frames < 0 or self.fps <= 0:
            raise ValueError(f"{where}: need num_frames >= 0 and fps > 0, got {self.num_frames} and {self.fps}")
        for index, kinds in self.labels.items():
            if not 0 <= index < self.num_frames:
                raise ValueError(f"{where}: label at frame {index} is outside 0..{self.num_frames - 1}")
            unknown = set(kinds) - set(LABEL_KINDS)
            if unknown:
                raise ValueError(f"{where}: unknown label kind(s) {sorted(unknown)}; known: {LABEL_KINDS}")

    @property
    def source(self) -> str:
        """The video file, or "" for an image sequence (the manifest's `source` column)."""
        return self.video

    @property
    def labelled_frames(self) -> tuple[int, ...]:
        return tuple(sorted(self.labels))
