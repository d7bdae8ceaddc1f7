"""Reader of a dataset directory (docs/data-formats.md §3), memory-mapped.

Why memory-mapped: the feature tensor is ~1.2 MB per labelled frame, so an hour of drives
does not fit in RAM; ``np.load(mmap_mode='r')`` lets the trainer's batches touch only the rows
they need, and several loader workers share the page cache.

Everything is validated when the dataset is opened (format, every array's dtype and shape,
CSR offsets, drives and splits), so a damaged or mismatched directory fails at once with one
:class:`ConfigError` line instead of deep inside a training epoch.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from mmdistill_common.errors import ConfigError

from .dataset_build import FORMAT, FORMAT_VERSION, MODALITIES, SPLITS, content_hash

__all__ = ['DistillDataset']

Rows = Union[int, Sequence[int], np.ndarray]


def _rows(rows: Rows) -> np.ndarray:
    return np.atleast_1d(np.asarray(rows, dtype=np.int64))


class DistillDataset:
    """One dataset directory; rows are labelled frames in drive order, then time order.

    ``features(rows)`` float32 ``(B, C, n_mels, T)``; boxes are xyxy pixels of the reference
    camera image (``index['image_size']`` = [width, height]); attention maps are the teachers'
    unnormalised q (zeros where a teacher did not deliver, see ``teacher_present``).
    """

    def __init__(self, root: Union[str, Path]):
        from mmdistill_student.frontend import FrontendConfig
        from mmdistill_student.model import feature_groups

        self.root = Path(root)
        path = self.root / 'index.json'
        if not path.is_file():
            raise ConfigError(f'{self.root} is not a dataset directory (no index.json)')
        try:
            index = json.loads(path.read_text())
        except ValueError as exc:
            raise ConfigError(f'{path}: not valid JSON ({exc})') from None
        fmt = index.get('format') if isinstance(index, dict) else None
        if fmt != FORMAT:
            raise ConfigError(f'{path}: not an {FORMAT} index (format={fmt!r})')
        if index.get('format_version') != FORMAT_VERSION:
            raise ConfigError(f'{path}: format_version {index.get("format_version")!r}, '
                              f'this reader reads {FORMAT_VERSION}')
        for key in ('frontend', 'feature_groups', 'n_frames', 'drives', 'splits', 'window_mode', 'image_size',
                    'modalities', 'content_hash'):
            if key not in index:
                raise ConfigError(f'{path}: missing key {key!r}')
        if list(index['modalities']) != list(MODALITIES):
            raise ConfigError(f'{path}: modalities {index["modalities"]}, expected {list(MODALITIES)}')
        self.index: dict = index
        self.frontend = FrontendConfig.from_dict(index['frontend'])
        groups = {k: (int(a), int(b)) for k, (a, b) in index['feature_groups'].items()}
        if groups != feature_groups(self.frontend):
            raise ConfigError(f'{path}: feature_groups {groups} do not match the front end '
                              f'({feature_groups(self.frontend)})')
        self.feature_groups: Dict[str, Tuple[int, int]] = groups
        self.n = int(index['n_frames'])
        self._arrays: Dict[str, np.ndarray] = {}
        self._audio: Dict[int, np.ndarray] = {}
        self._validate()

    # ------------------------------------------------------------------------- validation
    def _load(self, name: str, dtype, shape: Tuple[Optional[int], ...]) -> np.ndarray:
        p = self.root / f'{name}.npy'
        if not p.is_file():
            raise ConfigError(f'{self.root}: missing {p.name}')
        try:
            arr = np.load(p, mmap_mode='r', allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise ConfigError(f'{p}: unreadable ({exc})') from None
        if arr.dtype != np.dtype(dtype):
            raise ConfigError(f'{p}: dtype {arr.dtype}, expected {np.dtype(dtype)}')
        if arr.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, arr.shape)):
            want = tuple('*' if s is None else s for s in shape)
            raise ConfigError(f'{p}: shape {arr.shape}, expected {want}')
        self._arrays[name] = arr
        return arr

    def _ragged(self, name: str, values: Dict[str, Tuple[object, tuple]]) -> None:
        off = np.asarray(self._load(f'{name}_offsets', np.int64, (self.n + 1,)))
        if off[0] != 0 or np.any(np.diff(off) < 0):
            raise ConfigError(f'{self.root}: {name}_offsets.npy is not non-decreasing from 0')
        m = int(off[-1])
        for key, (dtype, tail) in values.items():
            self._load(f'{name}_{key}', dtype, (m, *tail))

    def _validate(self) -> None:
        n, ix = self.n, self.index
        if n < 1:
            raise ConfigError(f'{self.root}: n_frames must be >= 1, got {n}')
        self._load('features', np.float16, (n, *self.frontend.feature_shape()))
        for name, dtype, tail in (('stamp_ns', np.int64, ()), ('drive', np.int32, ()),
                                  ('window_start', np.int64, ()), ('count', np.int16, ()),
                                  ('occluded', bool, ()), ('teacher_present', bool, (len(MODALITIES),))):
            self._load(name, dtype, (n, *tail))
        w, h = (int(v) for v in ix['image_size'])
        strides = [int(s) for s in ix.get('strides', (8, 16, 32))]
        for m in MODALITIES:
            for lvl, s in zip((3, 4, 5), strides):
                self._load(f'attention_{m}_p{lvl}', np.float16, (n, h // s, w // s))
        box = (np.float32, (4,))
        self._ragged('labels', {'boxes': box, 'scores': (np.float32, ()), 'support': (bool, (len(MODALITIES),))})
        if (self.root / 'labels_class.npy').exists():
            self._load('labels_class', np.int16, (int(self._arrays['labels_offsets'][-1]),))
        for m in MODALITIES:
            self._ragged(f'teacher_{m}', {'boxes': box, 'scores': (np.float32, ())})
        if self.has_ground_truth:
            self._ragged('gt', {'boxes': box, 'ids': (np.int32, ()), 'occluded': (bool, ()), 'audible': (bool, ())})
            m = int(self._arrays['gt_offsets'][-1])
            if (self.root / 'gt_visible.npy').exists():      # datasets built before the evaluation rule lack them
                self._load('gt_visible', np.float32, (m, len(MODALITIES)))
                self._load('gt_distance', np.float32, (m,))
            self._load('gt_present', bool, (n,))
        drives = ix['drives']
        if not drives:
            raise ConfigError(f'{self.root}: index lists no drives')
        drive = np.asarray(self._arrays['drive'])
        if drive.min() < 0 or drive.max() >= len(drives):
            raise ConfigError(f'{self.root}: drive.npy refers to drives outside index.json')
        total = 0
        names = set()
        ws = np.asarray(self._arrays['window_start'])
        N = self.frontend.window_samples
        for k, d in enumerate(drives):
            first, count = int(d['first']), int(d['count'])
            if first != total or not np.all(drive[first:first + count] == k):
                raise ConfigError(f'{self.root}: drive {d["name"]!r} rows {first}..{first + count} '
                                  'do not match drive.npy')
            total += count
            names.add(d['name'])
            p = self.root / d['audio']
            if not p.is_file():
                raise ConfigError(f'{self.root}: missing {d["audio"]}')
            a = np.load(p, mmap_mode='r', allow_pickle=False)
            if a.dtype != np.int16 or a.ndim != 2 or a.shape[1] != self.frontend.channels:
                raise ConfigError(f'{p}: expected int16 (S, {self.frontend.channels}), got {a.dtype} {a.shape}')
            if count and (ws[first:first + count].min() < 0 or ws[first:first + count].max() + N > len(a)):
                raise ConfigError(f'{p}: window_start points outside the drive audio')
            self._audio[k] = a
        if total != n:
            raise ConfigError(f'{self.root}: drives cover {total} rows but n_frames is {n}')
        for split, lst in ix['splits'].items():
            if split not in SPLITS:
                raise ConfigError(f'{self.root}: unknown split {split!r}')
            unknown = set(lst) - names
            if unknown:
                raise ConfigError(f'{self.root}: split {split!r} names unknown drives {sorted(unknown)}')

    # ------------------------------------------------------------------------- metadata
    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return (f'DistillDataset({str(self.root)!r}, n={self.n}, drives={len(self.index["drives"])}, '
                f'window={self.window_mode}, features={self.frontend.feature_shape()})')

    @property
    def window_mode(self) -> str:
        return self.index['window_mode']

    @property
    def content_hash(self) -> str:
        return self.index['content_hash']

    @property
    def has_ground_truth(self) -> bool:
        return bool(self.index.get('has_ground_truth', False))

    @property
    def drives(self) -> List[dict]:
        return self.index['drives']

    def verify(self) -> bool:
        """Recompute the content hash over the arrays and compare it with index.json."""
        return content_hash(self.root) == self.content_hash

    def split_indices(self, name: str, mixed: bool = True) -> np.ndarray:
        """Rows (sorted int64) of the drives in split ``name`` ('train' | 'val' | 'test');
        ``mixed=False`` leaves out the mixed drives (``dataset build --mix``: training only), for
        what must see recorded drives alone (the baselines' fits)."""
        if name not in SPLITS:
            raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {name!r}")
        wanted = set(self.index['splits'].get(name, []))
        if not mixed:
            wanted -= {d['name'] for d in self.drives if d.get('mixed_with')}
        ids = [k for k, d in enumerate(self.drives) if d['name'] in wanted]
        return np.flatnonzero(np.isin(np.asarray(self._arrays['drive']), ids)).astype(np.int64)

    def drive_name(self, row: int) -> str:
        return self.drives[int(self._arrays['drive'][self._row(row)])]['name']

    def conditions(self, row: int) -> dict:
        """Drive conditions (scenario, time_of_day, weather, ego_motion) + the frame's occluded flag."""
        r = self._row(row)
        d = self.drives[int(self._arrays['drive'][r])]
        out = {k: d.get(k, 'unknown') for k in ('scenario', 'time_of_day', 'weather', 'ego_motion')}
        out['occluded'] = bool(self._arrays['occluded'][r])
        return out

    def _row(self, row) -> int:
        r = int(row)
        if not 0 <= r < self.n:
            raise IndexError(f'row {r} out of range for a dataset of {self.n} frames')
        return r

    def _check_rows(self, rows: Rows) -> np.ndarray:
        r = _rows(rows)
        if r.size and (r.min() < 0 or r.max() >= self.n):
            raise IndexError(f'rows out of range for a dataset of {self.n} frames')
        return r

    # ------------------------------------------------------------------------- tensors
    def features(self, rows: Rows, channels: Optional[Sequence[int]] = None) -> np.ndarray:
        """float32 ``(B, C, n_mels, T)``; ``channels`` selects feature channels (see feature_groups)."""
        r = self._check_rows(rows)
        f = self._arrays['features']
        # row by row: each row is one contiguous block of the memory map (3x faster than
        # fancy indexing over rows and channels together)
        if channels is None:
            return np.stack([np.asarray(f[i], dtype=np.float32) for i in r]) if r.size else \
                np.zeros((0,) + f.shape[1:], np.float32)
        ch = np.asarray(list(channels), dtype=np.int64)
        if ch.size and (ch.min() < 0 or ch.max() >= f.shape[1]):
            raise ConfigError(f'feature channels {ch.tolist()} outside 0..{f.shape[1] - 1}')
        if ch.size and np.array_equal(ch, np.arange(ch[0], ch[0] + ch.size)):
            sel = slice(int(ch[0]), int(ch[0]) + ch.size)
        else:
            sel = ch
        out = np.empty((r.size, ch.size) + f.shape[2:], np.float32)
        for k, i in enumerate(r):
            out[k] = f[i][sel]
        return out

    def attention(self, rows: Rows, m: str) -> List[np.ndarray]:
        """Teacher ``m``'s attention ``[p3 (B, H/8, W/8), p4, p5]`` float32."""
        if m not in MODALITIES:
            raise ConfigError(f'unknown teacher {m!r} (one of {", ".join(MODALITIES)})')
        r = self._check_rows(rows)
        return [np.asarray(self._arrays[f'attention_{m}_p{lvl}'][r], dtype=np.float32) for lvl in (3, 4, 5)]

    def teacher_present(self, rows: Rows) -> np.ndarray:
        """bool ``(B, 3)``: rgb, depth, thermal delivered for the frame."""
        return np.asarray(self._arrays['teacher_present'][self._check_rows(rows)], dtype=bool)

    def counts(self, rows: Rows) -> np.ndarray:
        """Number of fused pseudo-label boxes per frame (the pretext target), int64."""
        return np.asarray(self._arrays['count'][self._check_rows(rows)], dtype=np.int64)

    def stamps(self, rows: Rows) -> np.ndarray:
        return np.asarray(self._arrays['stamp_ns'][self._check_rows(rows)], dtype=np.int64)

    def _slice(self, name: str, row: int) -> slice:
        off = self._arrays[f'{name}_offsets']
        r = self._row(row)
        return slice(int(off[r]), int(off[r + 1]))

    def labels(self, row: int) -> Tuple[np.ndarray, np.ndarray]:
        """Fused pseudo-labels of the frame: boxes float32 (n, 4) xyxy px, scores float32 (n,)."""
        s = self._slice('labels', row)
        return (np.array(self._arrays['labels_boxes'][s], np.float32),
                np.array(self._arrays['labels_scores'][s], np.float32))

    def label_support(self, row: int) -> np.ndarray:
        """bool (n, 3): which teachers support each fused box."""
        return np.array(self._arrays['labels_support'][self._slice('labels', row)], bool)

    def teacher_boxes(self, row: int, m: str) -> Tuple[np.ndarray, np.ndarray]:
        """Teacher ``m``'s own detections of the frame (empty when it did not deliver)."""
        if m not in MODALITIES:
            raise ConfigError(f'unknown teacher {m!r} (one of {", ".join(MODALITIES)})')
        s = self._slice(f'teacher_{m}', row)
        return (np.array(self._arrays[f'teacher_{m}_boxes'][s], np.float32),
                np.array(self._arrays[f'teacher_{m}_scores'][s], np.float32))

    def ground_truth(self, row: int) -> Optional[dict]:
        """dict(boxes (n, 4) float32, ids int32, occluded bool, audible bool, visible (n, 3) float32
        per camera, distance (n,) float32 metres), or None without truth (no visible / distance in
        datasets built before they were stored)."""
        r = self._row(row)
        if not self.has_ground_truth or not bool(self._arrays['gt_present'][r]):
            return None
        s = self._slice('gt', r)
        out = {'boxes': np.array(self._arrays['gt_boxes'][s], np.float32),
               'ids': np.array(self._arrays['gt_ids'][s], np.int32),
               'occluded': np.array(self._arrays['gt_occluded'][s], bool),
               'audible': np.array(self._arrays['gt_audible'][s], bool)}
        if 'gt_visible' in self._arrays:
            out['visible'] = np.array(self._arrays['gt_visible'][s], np.float32)
            out['distance'] = np.array(self._arrays['gt_distance'][s], np.float32)
        return out

    def audio_window(self, row: int) -> np.ndarray:
        """The frame's raw window, int16 ``(window_samples, C)`` (what the features were computed from)."""
        r = self._row(row)
        a = self._audio[int(self._arrays['drive'][r])]
        start = int(self._arrays['window_start'][r])
        return np.array(a[start:start + self.frontend.window_samples], np.int16)
