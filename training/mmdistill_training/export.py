"""Export the audio student's network to ONNX, and run the exported model (:class:`OnnxStudent`).

Why: the runtime node and other deployments should not need PyTorch's training stack to run
the student, and ONNX Runtime is usually the faster CPU engine. Only the network is exported
(features -> head outputs); the front end (STFT/log-mel/GCC-PHAT) and the decoding (threshold,
NMS) stay in Python, shared with :class:`~mmdistill_student.model.StudentDetector`, so the two
paths give the same boxes.

Graph contract (opset 17 by default, dynamic batch axis ``batch``)::

    input   features    float32 (batch, C_in, n_mels, T)    selected feature channels
    output  cls_logits  float32 (batch, N, K)                class logits (sigmoid not applied)
    output  box_ltrb    float32 (batch, N, 4)                distances to the box sides, pixels
    output  centerness  float32 (batch, N)                   centerness logits (if the head has it)

``N`` is the number of cells over all levels, level by level (P3 first), row-major within a
level (:func:`mmdistill_teachers.head.flatten_outputs`). The metadata file ``FILE.json`` next to
``FILE.onnx`` holds the level sizes, strides, image size, the input/output names and shapes,
the front end's normalisation statistics and the whole checkpoint metadata (config included).
"""
from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from mmdistill_common.errors import ConfigError, InputError
from mmdistill_teachers.head import _MAX_EXP

__all__ = ['FORMAT', 'FORMAT_VERSION', 'INPUT_NAME', 'OUTPUT_NAMES', 'export_onnx', 'export_checkpoint',
           'metadata_path_for', 'OnnxStudent']

FORMAT = 'mmdistill-student-onnx'
FORMAT_VERSION = 1
INPUT_NAME = 'features'
OUTPUT_NAMES = ('cls_logits', 'box_ltrb', 'centerness')
MIN_OPSET, MAX_OPSET = 14, 20

PathLike = Union[str, os.PathLike]


class _FlatHead(nn.Module):
    """StudentDetector with the per-level head outputs concatenated into fixed tensors."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        outputs, _ = self.model(x)
        flat = [torch.cat([m.flatten(2).transpose(1, 2) for m in outputs['cls_logits']], dim=1),
                torch.cat([m.flatten(2).transpose(1, 2) for m in outputs['box_ltrb']], dim=1)]
        if outputs.get('centerness') is not None:
            flat.append(torch.cat([m.flatten(1) for m in outputs['centerness']], dim=1))
        return tuple(flat)


class _ColumnEncoderExport(nn.Module):
    """:class:`~mmdistill_student.column_encoder.ColumnEncoder` (eval mode) with its constants folded
    for export, equal up to float rounding: the input BatchNorm runs after the time pooling (both
    are per-channel affine / averaging, so they commute; the BN then touches ``time_pool`` times
    fewer values); the position code's share of ``position_mix`` is a constant map added after
    the conv (no batch-sized Expand/Concat); ``row_pos`` and the P3 BatchNorm are folded into
    ``to_rows``; reshapes use constant shapes. Reads the module's parameters at build time."""

    def __init__(self, enc: nn.Module):
        super().__init__()
        self.enc = enc
        cfg = enc.cfg
        (h3, w3), _, _ = cfg.level_shapes()
        self.h3, self.w3, self.o = int(h3), int(w3), int(cfg.out_channels)

        def bn_affine(bn):
            a = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
            return a, bn.bias.detach() - bn.running_mean * a

        with torch.no_grad():
            self.position = bool(cfg.position)
            if self.position:
                conv, bn = enc.position_mix[0], enc.position_mix[1]
                w = conv.weight.detach()[:, :, 0]                       # (C, C + P)
                c = w.shape[0]
                a, b = bn_affine(bn)
                self.register_buffer('pos_w', (w[:, :c] * a[:, None])[:, :, None].clone())
                self.register_buffer('pos_map', (a[:, None] * (w[:, c:] @ enc.column_code[0]) + b[:, None])[None].clone())
            a, b = bn_affine(enc.p3[0])                                 # per output channel o
            a_r, b_r = a.repeat_interleave(self.h3), b.repeat_interleave(self.h3)   # per to_rows channel
            row = enc.row_pos.detach().reshape(-1)                      # (O * h3,), channel o * h3 + r
            self.register_buffer('rows_w', (enc.to_rows.weight.detach() * a_r[:, None, None]).clone())
            self.register_buffer('rows_b', (a_r * (enc.to_rows.bias.detach() + row) + b_r).clone())

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        import torch.nn.functional as F
        enc, cfg = self.enc, self.enc.cfg
        if cfg.time_pool > 1:
            x = F.avg_pool2d(x, (1, cfg.time_pool), ceil_mode=True)
        x = enc.input_norm(x)
        h = enc.readout(enc.stages(x)).squeeze(-1)                         # (B, C, columns)
        h = F.relu(h + enc.context(h.mean(dim=2, keepdim=True)))
        h = enc.columns_net(h)
        if h.shape[-1] != self.w3:
            h = F.avg_pool1d(h, h.shape[-1] // self.w3) if h.shape[-1] % self.w3 == 0 else \
                F.interpolate(h, size=self.w3, mode='linear', align_corners=False)
        if self.position:
            h = F.relu(F.conv1d(h, self.pos_w) + self.pos_map)
        g = F.conv1d(h, self.rows_w, self.rows_b)
        p3 = F.relu(g.reshape(-1, self.o, self.h3, self.w3))
        p4 = enc.p4(F.avg_pool2d(p3, 2))
        p5 = enc.p5(F.avg_pool2d(p4, 2))
        return [p3, p4, p5]


#: the ColumnEncoder children _ColumnEncoderExport knows (any other structure is exported as is)
_COLUMN_CHILDREN = {'input_norm', 'stages', 'readout', 'context', 'columns_net', 'dropout', 'position_mix',
                    'to_rows', 'p3', 'p4', 'p5'}


def _export_encoder(enc: nn.Module) -> nn.Module:
    if type(enc).__name__ == 'ColumnEncoder' and {n for n, _ in enc.named_children()} <= _COLUMN_CHILDREN \
            and not enc.training:
        return _ColumnEncoderExport(enc)
    return enc


class _FusedFlatHead(nn.Module):
    """Export form of :class:`_FlatHead`: the same outputs from a cheaper graph.

    The head's output convs share their weights across levels, so per level the 3x3 convs that
    read the same tower output (all three with ``head_convs`` 0, else box + centerness) run as one
    conv with the weights concatenated along the output channels, the level's box ``Scale``
    folded into the box rows (``s * conv(x, w, b) = conv(x, s w, s b)``, equal up to float
    rounding). The per-level maps are flattened with constant shapes (no Shape/Slice chains) and
    concatenated once, then split; the box stride is a constant per-cell vector. Built from a
    model in eval mode; its parameters are snapshots (re-build after changing the model)."""

    def __init__(self, model: nn.Module, input_shape: Sequence[int]):
        super().__init__()
        self.encoder = _export_encoder(model.encoder)
        head = model.head
        with torch.no_grad():
            pyramid = model.encoder(torch.zeros((1,) + tuple(input_shape)))
        self.sizes = [(int(p.shape[-2]), int(p.shape[-1])) for p in pyramid]
        self.k = int(head.num_classes)
        self.has_ctr = head.ctr_out is not None
        # towers of depth 0 are identities: then the class conv reads the same map as the others
        self.cls_tower = head.cls_tower if len(head.cls_tower) else None
        self.box_tower = head.box_tower if len(head.box_tower) else None
        self.shared = self.cls_tower is None and self.box_tower is None
        cls_w, cls_b = head.cls_out.weight.detach(), head.cls_out.bias.detach()
        box_w, box_b = head.box_out.weight.detach(), head.box_out.bias.detach()
        for level, scale in enumerate(head.scales):
            s = scale.scale.detach()
            ws, bs = [box_w * s], [box_b * s]
            if self.has_ctr:
                ws.append(head.ctr_out.weight.detach())
                bs.append(head.ctr_out.bias.detach())
            if self.shared:
                ws.insert(0, cls_w)
                bs.insert(0, cls_b)
            self.register_buffer(f'w{level}', torch.cat(ws).clone().float())
            self.register_buffer(f'b{level}', torch.cat(bs).clone().float())
        if not self.shared:
            self.register_buffer('cls_w', cls_w.clone().float())
            self.register_buffer('cls_b', cls_b.clone().float())
        stride = torch.cat([torch.full((h * w,), float(s)) for (h, w), s in zip(self.sizes, head.strides)])
        self.register_buffer('stride', stride[:, None])     # (N, 1)

    def forward(self, x: torch.Tensor):
        import torch.nn.functional as F
        pyramid = self.encoder(x)
        outs, cls = [], []
        for level, (f, (h, w)) in enumerate(zip(pyramid, self.sizes)):
            f = f.float()
            if self.shared:
                outs.append(F.conv2d(f, getattr(self, f'w{level}'), getattr(self, f'b{level}'), padding=1)
                            .reshape(-1, self.k + 4 + int(self.has_ctr), h * w))
            else:
                c = self.cls_tower(f) if self.cls_tower is not None else f
                b = self.box_tower(f) if self.box_tower is not None else f
                cls.append(F.conv2d(c, self.cls_w, self.cls_b, padding=1).reshape(-1, self.k, h * w))
                outs.append(F.conv2d(b, getattr(self, f'w{level}'), getattr(self, f'b{level}'), padding=1)
                            .reshape(-1, 4 + int(self.has_ctr), h * w))
        y = torch.cat(outs, dim=2).transpose(1, 2)               # (B, N, [K +] 4 [+ 1])
        k0 = self.k if self.shared else 0
        cls_logits = y[:, :, :k0] if self.shared else torch.cat(cls, dim=2).transpose(1, 2)
        box = torch.exp(y[:, :, k0:k0 + 4].clamp(max=_MAX_EXP)) * self.stride
        if self.has_ctr:
            return cls_logits, box, y[:, :, k0 + 4]
        return cls_logits, box


def _fused_or_reference(model: nn.Module, reference: nn.Module, shape) -> nn.Module:
    """The :class:`_FusedFlatHead` export form when it matches ``reference`` in PyTorch on a random
    batch (relative tolerance 1e-4), else ``reference`` (a model whose structure it does not know)."""
    try:
        fused = _FusedFlatHead(model, shape).eval()
        x = torch.randn((2,) + tuple(shape), generator=torch.Generator().manual_seed(2)) * 3.0
        with torch.no_grad():
            for a, b in zip(fused(x), reference(x)):
                if a.shape != b.shape or not torch.allclose(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()) + 1e-6):
                    raise ValueError('fused export form differs')
        return fused
    except Exception as e:      # noqa: BLE001 - any mismatch: export the model as it is
        warnings.warn(f'exporting the unfused student graph: {e}', RuntimeWarning)
        return reference


def metadata_path_for(onnx_path: PathLike) -> Path:
    """``model.onnx`` -> ``model.json``."""
    return Path(onnx_path).with_suffix('.json')


def _frontend_stats(model) -> dict:
    fe = model.frontend
    return {'normalize': bool(getattr(fe, 'normalize', False)),
            'mean': [float(v) for v in fe.mean.tolist()], 'std': [float(v) for v in fe.std.tolist()]}


def export_onnx(model, out: PathLike, opset: int = 17, checkpoint_meta: Optional[dict] = None,
                verify: bool = True) -> dict:
    """Export ``model`` (a :class:`StudentDetector`) to ``out`` (``.onnx``) and ``out``'s ``.json``.

    Both files are written under temporary names and renamed; the graph is checked with
    ``onnx.checker`` and, with ``verify``, run by ONNX Runtime on a batch of 2 (and 3, for the
    dynamic axis) and compared with PyTorch (the largest absolute difference is recorded).
    Returns the metadata written."""
    import onnx

    out = Path(out)
    if out.suffix != '.onnx':
        raise ConfigError(f'output file must end in .onnx, got {out}')
    if not MIN_OPSET <= int(opset) <= MAX_OPSET:
        raise ConfigError(f'opset must be in {MIN_OPSET}..{MAX_OPSET}, got {opset}')
    if not out.parent.is_dir():
        raise ConfigError(f'output directory does not exist: {out.parent}')
    cfg = model.config
    fe = model.frontend_config
    shape = (cfg.in_channels, fe.rows, fe.n_frames)
    was = model.training
    model.eval()
    reference = _FlatHead(model).eval()
    wrapper = _fused_or_reference(model, reference, shape)
    has_ctr = model.head.ctr_out is not None
    names = list(OUTPUT_NAMES if has_ctr else OUTPUT_NAMES[:2])
    gen = torch.Generator().manual_seed(0)
    dummy = torch.randn((2,) + shape, generator=gen)
    tmp_onnx = out.with_name(out.name + '.tmp')
    tmp_meta = metadata_path_for(out).with_name(metadata_path_for(out).name + '.tmp')
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # the legacy exporter warns that it is legacy and that shape checks are traced as
            # constants; both are expected here (shapes are fixed except the batch axis)
            warnings.simplefilter('ignore', category=DeprecationWarning)
            warnings.simplefilter('ignore', category=torch.jit.TracerWarning)
            outputs, _ = model(dummy[:1])
            torch.onnx.export(wrapper, (dummy,), str(tmp_onnx), dynamo=False, opset_version=int(opset),
                              input_names=[INPUT_NAME], output_names=names, do_constant_folding=True,
                              dynamic_axes={n: {0: 'batch'} for n in [INPUT_NAME] + names})
        onnx.checker.check_model(onnx.load(str(tmp_onnx)), full_check=True)
        feature_sizes = [[int(v) for v in m.shape[-2:]] for m in outputs['cls_logits']]
        n_cells = sum(h * w for h, w in feature_sizes)
        k = int(model.head.num_classes)
        out_shapes = {'cls_logits': ['batch', n_cells, k], 'box_ltrb': ['batch', n_cells, 4],
                      'centerness': ['batch', n_cells]}
        meta = {
            'format': FORMAT, 'format_version': FORMAT_VERSION, 'onnx_file': out.name, 'opset': int(opset),
            'input': {'name': INPUT_NAME, 'shape': ['batch', *shape], 'dtype': 'float32'},
            'outputs': [{'name': n, 'shape': out_shapes[n], 'dtype': 'float32'} for n in names],
            'feature_sizes': feature_sizes, 'strides': [int(s) for s in outputs['strides']],
            'image_size': [int(v) for v in outputs['image_size']], 'num_classes': k,
            'class_names': list(cfg.class_names), 'frontend_stats': _frontend_stats(model),
            'checkpoint': checkpoint_meta if checkpoint_meta is not None else {'config': cfg.to_dict()},
            'created': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
        }
        if verify:
            meta['verification'] = _verify(reference, tmp_onnx, shape, names)
        tmp_meta.write_text(json.dumps(meta, indent=2, sort_keys=True) + '\n')
        os.replace(tmp_onnx, out)
        os.replace(tmp_meta, metadata_path_for(out))
    finally:
        model.train(was)
        for p in (tmp_onnx, tmp_meta):
            if p.exists():
                p.unlink()
    return meta


def _verify(wrapper: nn.Module, path: Path, shape, names: Sequence[str]) -> dict:
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=['CPUExecutionProvider'])
    gen = torch.Generator().manual_seed(1)
    worst = 0.0
    for b in (2, 3):
        x = torch.randn((b,) + tuple(shape), generator=gen) * 10.0
        with torch.no_grad():
            ref = wrapper(x)
        got = sess.run(list(names), {INPUT_NAME: x.numpy()})
        worst = max(worst, max(float(np.max(np.abs(g - r.numpy()))) for g, r in zip(got, ref)))
    return {'batches': [2, 3], 'max_abs_diff': worst}


def export_checkpoint(checkpoint: PathLike, out: PathLike, opset: int = 17, verify: bool = True) -> dict:
    """Load a student checkpoint directory and export it (see :func:`export_onnx`)."""
    from mmdistill_student.checkpoint import load_checkpoint
    model, meta = load_checkpoint(checkpoint)
    return export_onnx(model, out, opset=opset, checkpoint_meta=meta, verify=verify)


class OnnxStudent:
    """An exported student run by ONNX Runtime, with the same predict API as StudentDetector.

    ``OnnxStudent('student.onnx')`` reads ``student.json`` beside it. ``predict_features``
    and ``predict_window`` return per window ``dict(boxes (N, 4) float32 xyxy pixels,
    scores (N,), labels (N,) int64)``, decoded by :func:`mmdistill_teachers.head.decode` with
    the checkpoint's threshold / NMS settings."""

    def __init__(self, onnx_path: PathLike, metadata_path: Optional[PathLike] = None, threads: int = 1):
        import onnxruntime as ort

        from mmdistill_student.model import StudentConfig

        onnx_path = Path(onnx_path)
        meta_path = Path(metadata_path) if metadata_path is not None else metadata_path_for(onnx_path)
        if not onnx_path.is_file():
            raise ConfigError(f'ONNX model not found: {onnx_path}')
        try:
            meta = json.loads(meta_path.read_text())
        except FileNotFoundError:
            raise ConfigError(f'ONNX metadata not found: {meta_path}') from None
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f'{meta_path}: unreadable metadata: {e}') from None
        if meta.get('format') != FORMAT or meta.get('format_version') != FORMAT_VERSION:
            raise ConfigError(f'{meta_path}: not {FORMAT} version {FORMAT_VERSION} metadata')
        self.metadata = meta
        self.config = StudentConfig.from_dict(meta['checkpoint']['config'])
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(onnx_path), so, providers=['CPUExecutionProvider'])
        except Exception as e:      # onnxruntime raises its own exception types
            raise ConfigError(f'{onnx_path}: ONNX Runtime cannot load it: {e}') from None
        self.output_names = [o['name'] for o in meta['outputs']]
        self.input_shape = tuple(int(v) for v in meta['input']['shape'][1:])
        self.feature_sizes = [tuple(s) for s in meta['feature_sizes']]
        self.strides = tuple(meta['strides'])
        self.image_size = tuple(meta['image_size'])
        self._frontend = None

    def run(self, features: np.ndarray) -> Dict[str, np.ndarray]:
        """Raw network outputs for a (B, C_in, n_mels, T) float32 batch."""
        x = np.asarray(features.numpy() if torch.is_tensor(features) else features, dtype=np.float32)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise InputError(f'student features must be (B, {", ".join(map(str, self.input_shape))}), '
                             f'got {tuple(x.shape)}')
        if not np.all(np.isfinite(x)):
            raise InputError('student features contain NaN or infinite values')
        res = self.session.run(self.output_names, {INPUT_NAME: np.ascontiguousarray(x)})
        return dict(zip(self.output_names, res))

    def head_outputs(self, raw: Dict[str, np.ndarray]) -> dict:
        """Flat outputs -> the per-level dict of :class:`DetectionHead` (for ``decode``)."""
        def split(a: np.ndarray, per_cell: bool) -> List[torch.Tensor]:
            maps, start = [], 0
            b = a.shape[0]
            for h, w in self.feature_sizes:
                part = torch.from_numpy(a[:, start:start + h * w])
                start += h * w
                maps.append(part.transpose(1, 2).reshape(b, -1, h, w) if per_cell else part.reshape(b, 1, h, w))
            return maps
        ctr = raw.get('centerness')
        return {'cls_logits': split(raw['cls_logits'], True), 'box_ltrb': split(raw['box_ltrb'], True),
                'centerness': split(ctr, False) if ctr is not None else None,
                'strides': self.strides, 'image_size': self.image_size}

    def predict_features(self, features, score_threshold: Optional[float] = None,
                         nms_iou: Optional[float] = None) -> List[dict]:
        from mmdistill_teachers.head import decode_flat
        c = self.config
        raw = self.run(features)            # decoded flat (as decode does with head_outputs(raw))
        dets = decode_flat(raw['cls_logits'], raw['box_ltrb'], raw.get('centerness'), self.feature_sizes,
                           self.strides, self.image_size,
                           score_threshold=c.score_threshold if score_threshold is None else score_threshold,
                           nms_iou=c.nms_iou if nms_iou is None else nms_iou,
                           max_detections=c.max_detections, pre_nms_top_k=c.pre_nms_top_k,
                           class_agnostic_nms=True)
        return [{'boxes': b, 'scores': s, 'labels': l} for b, s, l in dets]

    @property
    def frontend(self):
        """The checkpoint's front end (with its normalisation statistics), built on first use."""
        if self._frontend is None:
            from mmdistill_student.frontend import Frontend
            fe = Frontend(self.config.frontend_config())
            st = self.metadata.get('frontend_stats') or {}
            if st.get('normalize'):
                fe.set_stats(st['mean'], st['std'])
            self._frontend = fe
        return self._frontend

    def select(self, full: np.ndarray) -> np.ndarray:
        """Front-end output (B, frontend.in_channels, M, T) -> the channels the network reads."""
        idx = self.config.input_channels
        return full if idx is None else full[:, idx]

    def predict_window(self, window, **kwargs) -> dict:
        """One raw window, float (channels, N) -> detections (see ``predict_features``)."""
        with torch.no_grad():
            full = self.frontend(window).numpy()
        return self.predict_features(self.select(full), **kwargs)[0]
