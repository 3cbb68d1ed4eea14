"""3D shape data: the synthetic ``primitives`` set (spec in the design doc), a mesh-folder loader
for real collections (ShapeNet / ModelNet layouts), and the point / SDF sampling both share.

Every item is a dict ``{"points": float32 [P, 3], "label": int, "kind": str}``, plus with SDF
samples ``"sdf_points": float32 [M, 3]`` and ``"sdf": float32 [M]`` (negative inside). Meshes are
normalised (bounding-box centre at the origin, farthest vertex at distance 1), so everything lives
in [-1, 1]³; SDF samples reach [-1.1, 1.1]³ (and a little beyond for near-surface ones).

SDF sampling defaults (``sample_sdf``): 6,144 near-surface points (75 %) and 2,048 uniform ones
(25 %). Near-surface points are area-uniform surface samples plus isotropic Gaussian offsets, half
with sigma 0.01 (1 % of the unit radius: resolves the zero level set) and half with sigma 0.05
(covers the band a decoder must get the sign right in); the uniform part anchors the far field.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import trimesh

from shared.io.data_errors import check_finite, data_error, describe, non_finite_rows, reason_of
from shared.errors import DataError
from shared.io.atomic_files import atomic_savez
from shared.io.skipped_inputs import report_skipped

from .mesh_sdf import signed_distance

PRIMITIVE_KINDS = ("sphere", "box", "cylinder", "cone", "torus")
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
MESH_EXTENSIONS = (".obj", ".off", ".ply", ".glb", ".stl")
UNIFORM_BOUND = 1.1
CACHE_VERSION = 1   # bump when the sampling changes, so old caches are not reused


def normalize_mesh(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """A copy with its bounding-box centre at the origin and its farthest vertex at distance 1."""
    mesh = mesh.copy()
    mesh.apply_translation(-mesh.bounds.mean(axis=0))
    scale = float(np.linalg.norm(mesh.vertices, axis=1).max())
    if not np.isfinite(scale):
        raise ValueError("mesh coordinates too large: its extent overflows")
    if scale <= 0:
        raise ValueError("mesh has zero extent")
    mesh.apply_scale(1.0 / scale)
    return mesh


def primitive_mesh(kind: str, rng: np.random.Generator) -> trimesh.Trimesh:
    """One normalised, axis-aligned primitive; its random parameters are drawn from ``rng``."""
    if kind == "sphere":
        mesh = trimesh.creation.icosphere(subdivisions=3, radius=1.0)
    elif kind == "box":
        mesh = trimesh.creation.box(extents=rng.uniform(0.5, 1.0, size=3))
    elif kind in ("cylinder", "cone"):
        radius, height = rng.uniform(0.3, 0.6), rng.uniform(0.6, 1.2)
        make = trimesh.creation.cylinder if kind == "cylinder" else trimesh.creation.cone
        mesh = make(radius=radius, height=height)   # the cone's base sits at z=0; normalising centres it
    elif kind == "torus":
        mesh = trimesh.creation.torus(major_radius=0.7, minor_radius=rng.uniform(0.15, 0.35))
    else:
        raise ValueError(f"unknown primitive kind {kind!r}; expected one of {PRIMITIVE_KINDS}")
    return normalize_mesh(mesh)


def sample_surface(mesh: trimesh.Trimesh, num_points: int, rng: np.random.Generator) -> np.ndarray:
    """``num_points`` points uniform on the surface (by area), float32 [P, 3]."""
    points, _ = trimesh.sample.sample_surface(mesh, int(num_points), seed=rng)
    return np.asarray(points, dtype=np.float32)


def sample_sdf(mesh: trimesh.Trimesh, rng: np.random.Generator, near: int = 6144, uniform: int = 2048,
               sigmas: tuple[float, ...] = (0.01, 0.05)) -> tuple[np.ndarray, np.ndarray]:
    """SDF samples: ``near`` surface points with Gaussian offsets (split evenly over ``sigmas``,
    in order) then ``uniform`` points in [-1.1, 1.1]³. Returns (points float32 [M, 3], sdf float32 [M])."""
    surface = trimesh.sample.sample_surface(mesh, int(near), seed=rng)[0] if near else np.zeros((0, 3))
    sigma = np.concatenate([np.full(len(part), s) for s, part in
                            zip(sigmas, np.array_split(np.arange(int(near)), len(sigmas)))])
    offsets = rng.normal(size=(int(near), 3)) * sigma[:, None]
    box = rng.uniform(-UNIFORM_BOUND, UNIFORM_BOUND, size=(int(uniform), 3))
    points = np.concatenate([surface + offsets, box]).astype(np.float32)
    return points, signed_distance(mesh, points)



class _ShapeSet(torch.utils.data.Dataset):
    """Items, materialize and its cache; subclasses give ``_rng``, ``_mesh``, ``_label``, ``_kind``."""

    label_names: tuple[str, ...] = ()
    cache_prefix = "shapes"

    def __init__(self, num_points: int, with_sdf: bool, sdf_near: int, sdf_uniform: int,
                 sigmas: tuple[float, ...], cache_dir):
        self.num_points, self.with_sdf = int(num_points), bool(with_sdf)
        self.sdf_near, self.sdf_uniform, self.sigmas = int(sdf_near), int(sdf_uniform), tuple(sigmas)
        self.cache_dir = None if cache_dir is None else Path(cache_dir)   # relative: to the cwd
        self._preloaded: dict | None = None   # cache arrays already read during construction

    # -- per item -----------------------------------------------------------------------------
    def _position(self, index: int) -> int:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {type(self).__name__} of length {len(self)}")
        return index % len(self)

    def _sample(self, index: int) -> dict:
        """numpy item; the rng is consumed in a fixed order (mesh parameters, points, SDF)."""
        rng = self._rng(index)
        mesh = self._mesh(index, rng)
        item = {"points": sample_surface(mesh, self.num_points, rng), "label": self._label(index),
                "kind": self._kind(index)}
        if self.with_sdf:
            item["sdf_points"], item["sdf"] = sample_sdf(mesh, rng, self.sdf_near, self.sdf_uniform,
                                                         self.sigmas)
        return item

    def mesh(self, index: int) -> trimesh.Trimesh:
        index = self._position(index)
        return self._mesh(index, self._rng(index))

    def __getitem__(self, index: int) -> dict:
        item = self._sample(self._position(index))
        for key in ("points", "sdf_points", "sdf"):
            if key in item:
                item[key] = torch.from_numpy(item[key])
        return item

    # -- whole set ----------------------------------------------------------------------------
    def cache_key(self) -> dict:
        return {"version": CACHE_VERSION, "num_points": self.num_points, "with_sdf": self.with_sdf,
                "sdf_near": self.sdf_near, "sdf_uniform": self.sdf_uniform, "sigmas": list(self.sigmas)}

    @property
    def cache_path(self) -> Path | None:
        if self.cache_dir is None:
            return None
        digest = hashlib.sha256(json.dumps(self.cache_key(), sort_keys=True).encode()).hexdigest()[:16]
        return self.cache_dir / f"{self.cache_prefix}-{digest}.npz"

    def _expected_shapes(self) -> dict:
        n, m = len(self), self.sdf_near + self.sdf_uniform
        shapes = {"points": (n, self.num_points, 3), "labels": (n,)}
        if self.with_sdf:
            shapes.update(sdf_points=(n, m, 3), sdf=(n, m))
        return shapes

    def _load_cache(self) -> dict | None:
        path = self.cache_path
        if path is None or not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
            self._accept_cache(arrays)
            for key, shape in self._expected_shapes().items():
                if arrays[key].shape != shape:
                    raise ValueError(f"{key} has shape {arrays[key].shape}, expected {shape}")
                if non_finite_rows(arrays[key]) is not None:
                    raise ValueError(f"{key} holds NaN/inf")
            return arrays
        except Exception as exc:  # truncated zip, bad header, missing key, wrong shape...
            warnings.warn(f"cache file {path} is unreadable ({exc}); regenerating it", stacklevel=3)
            path.unlink(missing_ok=True)   # so a later read does not trip (and warn) again
            return None

    def _accept_cache(self, arrays: dict) -> None:
        """Hook: read metadata stored beside the arrays (MeshFolder keeps its file lists there)."""

    def _cache_extras(self) -> dict:
        return {}

    def materialize(self) -> dict:
        """The whole set as tensors: ``points`` float32 [N, P, 3], ``labels`` long [N] and, with
        SDF, ``sdf_points`` float32 [N, M, 3] and ``sdf`` float32 [N, M]. Cached in an ``.npz``
        under ``cache_dir`` keyed by a hash of every parameter; a corrupt cache is regenerated."""
        arrays = self._preloaded if self._preloaded is not None else self._load_cache()
        self._preloaded = None
        if arrays is None:
            items = [self._sample(i) for i in range(len(self))]
            arrays = {"labels": np.array([it["label"] for it in items], dtype=np.int64).reshape(-1)}
            for key in ("points", "sdf_points", "sdf") if self.with_sdf else ("points",):
                arrays[key] = np.stack([it[key] for it in items]) if items \
                    else np.zeros(self._expected_shapes()[key], np.float32)
            if self.cache_path is not None:
                atomic_savez(self.cache_path, {**arrays, **self._cache_extras()})
        return {key: torch.from_numpy(np.ascontiguousarray(arrays[key])) for key in self._expected_shapes()}


class Primitives(_ShapeSet):
    """The synthetic primitives set: sphere, box, cylinder, cone, torus (spec in the design doc).

    Item ``i`` of a split uses ``np.random.default_rng([seed, split_id, i])`` (train 0, val 1,
    test 2: independent streams) for, in order: the kind (uniform over ``PRIMITIVE_KINDS``; the
    label is its index), the kind's parameters, the 2,048 surface points, then the SDF samples.
    So an item is a pure function of (seed, split, index), and its points do not depend on
    ``with_sdf``.
    """

    label_names = PRIMITIVE_KINDS
    cache_prefix = "primitives"

    def __init__(self, num_samples: int = 2000, num_points: int = 2048, seed: int = 0, split: str = "train",
                 with_sdf: bool = False, sdf_near: int = 6144, sdf_uniform: int = 2048,
                 cache_dir: str | os.PathLike | None = "datasets/primitives",
                 sigmas: tuple[float, ...] = (0.01, 0.05)):
        if split not in SPLIT_IDS:
            raise ValueError(f"split must be one of {list(SPLIT_IDS)}, got {split!r}")
        if seed < 0 or num_samples < 0:
            raise ValueError(f"seed and num_samples must be >= 0, got {seed}, {num_samples}")
        super().__init__(num_points, with_sdf, sdf_near, sdf_uniform, sigmas, cache_dir)
        self.num_samples, self.seed, self.split = int(num_samples), int(seed), split

    def __len__(self) -> int:
        return self.num_samples

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, SPLIT_IDS[self.split], index])

    def _label(self, index: int) -> int:
        return int(self._rng(index).integers(len(PRIMITIVE_KINDS)))   # the first draw of the stream

    def _kind(self, index: int) -> str:
        return PRIMITIVE_KINDS[self._label(index)]

    def _mesh(self, index: int, rng: np.random.Generator) -> trimesh.Trimesh:
        kind = PRIMITIVE_KINDS[int(rng.integers(len(PRIMITIVE_KINDS)))]
        return primitive_mesh(kind, rng)

    def cache_key(self) -> dict:
        return {**super().cache_key(), "set": "primitives", "num_samples": self.num_samples,
                "seed": self.seed, "split": self.split}


def load_mesh(path: str | os.PathLike) -> trimesh.Trimesh:
    """Load one mesh file (scenes concatenated), check it, repair what is cheap, normalise it.

    Raises ``DataError(f"{path}: <reason>")`` (a ``ValueError``) for an unreadable file, a non-mesh, no
    faces, face indices outside the vertices, zero area or NaN/inf vertices (checked before trimesh's
    processing, which would silently drop them). Processing with validation merges vertices and drops
    degenerate and duplicate faces (opposite duplicates of "double-sided" models would cancel in the
    winding number); open meshes then get ``fill_holes`` and, if the new faces broke it, ``fix_winding``.
    """
    try:
        mesh = trimesh.load(path, force="mesh", process=False)
    except Exception as exc:  # each format's parser raises its own types
        raise data_error(path, f"cannot read mesh ({describe(exc)})") from exc
    try:
        _check_mesh(mesh, path)
        mesh.process(validate=True)
        if not mesh.is_watertight:
            trimesh.repair.fill_holes(mesh)
        if not mesh.is_winding_consistent:
            trimesh.repair.fix_winding(mesh)
    except DataError:
        raise
    except Exception as exc:  # trimesh's checks and repairs on a mesh odd enough to break them
        raise data_error(path, f"cannot process mesh ({describe(exc)})") from exc
    try:
        return normalize_mesh(mesh)
    except ValueError as exc:
        raise data_error(path, str(exc)) from exc


def _check_mesh(mesh, path) -> None:
    """What ``load_mesh`` refuses before processing the mesh."""
    if not isinstance(mesh, trimesh.Trimesh):
        raise data_error(path, f"not a triangle mesh (got {type(mesh).__name__})")
    if len(mesh.faces) == 0:
        raise data_error(path, "mesh has no faces")
    faces, vertices = np.asarray(mesh.faces), np.asarray(mesh.vertices)
    if vertices.ndim != 2 or vertices.shape[1] != 3 or faces.ndim != 2 or faces.shape[1] != 3:
        raise data_error(path, f"expected 3D vertices and triangles, got {vertices.shape} and {faces.shape}")
    if faces.min() < 0 or faces.max() >= len(mesh.vertices):
        raise data_error(path, f"face indices outside the {len(mesh.vertices)} vertices")
    check_finite(mesh.vertices, path, "vertex coordinates", rows="vertices")
    with np.errstate(over="ignore", invalid="ignore"):   # an overflow is refused just below
        area = mesh.area
    if not np.isfinite(area):
        raise data_error(path, "mesh coordinates too large: its surface area overflows")
    if not area > 0:
        raise data_error(path, "mesh has zero surface area")


class MeshFolder(_ShapeSet):
    """Every mesh file under ``root`` (recursive, sorted by relative path), sampled like Primitives.

    Labels: the class is the first folder under ``root`` (``root/<class>/.../model.obj``, the
    ShapeNet / ModelNet layouts; for ``root/<class>/model.obj`` that is the immediate parent);
    ``label_names`` are the sorted class names; files directly in ``root`` get label -1, kind "".
    Item ``i`` uses ``np.random.default_rng([seed, i])`` for its points, then its SDF samples.

    Construction opens every file (``load_mesh``), unless a valid materialize cache for these files
    (paths, sizes, mtimes) and parameters exists: its stored file lists are reused. A bad file
    raises ``DataError`` (a ``ValueError``) naming it, or with ``skip_bad`` is left out, listed in
    ``self.skipped`` as ``(path, reason)`` and reported (``shared.io.skipped_inputs``).

    Open meshes: ``fill_holes`` first; one still not watertight (``num_non_watertight``, listed in
    ``non_watertight``) gets its SDF sign from the generalised winding number (``mesh_sdf``), robust
    to holes and cracks, at O(samples x faces) cost per mesh.
    """

    cache_prefix = "meshfolder"

    def __init__(self, root: str | os.PathLike, num_points: int = 2048, with_sdf: bool = False,
                 sdf_near: int = 6144, sdf_uniform: int = 2048, seed: int = 0, skip_bad: bool = False,
                 cache_dir: str | os.PathLike | None = "datasets/mesh_cache",
                 extensions: tuple[str, ...] = MESH_EXTENSIONS, sigmas: tuple[float, ...] = (0.01, 0.05)):
        super().__init__(num_points, with_sdf, sdf_near, sdf_uniform, sigmas, cache_dir)
        self.root, self.seed, self.skip_bad = Path(root), int(seed), bool(skip_bad)
        self.extensions = tuple(e.lower() for e in extensions)
        if not self.root.is_dir():
            raise FileNotFoundError(f"mesh folder {self.root} does not exist or is not a directory")
        self.candidates = sorted((p for p in self.root.rglob("*")
                                  if p.is_file() and p.suffix.lower() in self.extensions),
                                 key=lambda p: p.relative_to(self.root).as_posix())
        if not self.candidates:
            raise FileNotFoundError(f"no mesh files ({', '.join(self.extensions)}) found under {self.root}")
        # Taken once, so the cache key of this instance does not drift if files change later.
        self._file_stats = [(p.relative_to(self.root).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
                            for p in self.candidates]
        # Classes from every candidate, so a class whose files are all bad keeps the numbering stable.
        self.label_names = tuple(sorted({c for c in map(self._class_of, self.candidates) if c is not None}))
        self._preloaded = self._load_cache()
        if self._preloaded is None:
            self._scan()
        report_skipped(self.root, self.skipped)
        if not self.files:
            raise data_error(self.root, f"no readable meshes ({len(self.skipped)} skipped)")

    def _scan(self) -> None:
        self.files, self.skipped, self.non_watertight = [], [], []
        for path in self.candidates:
            try:
                mesh = load_mesh(path)
            except DataError as exc:
                if not self.skip_bad:
                    raise
                self.skipped.append((path, reason_of(exc, path)))
                continue
            self.files.append(path)
            if not mesh.is_watertight:
                self.non_watertight.append(path)

    @property
    def num_non_watertight(self) -> int:
        return len(self.non_watertight)

    def _class_of(self, path: Path) -> str | None:
        parts = path.relative_to(self.root).parts
        return parts[0] if len(parts) > 1 else None

    def __len__(self) -> int:
        return len(self.files)

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, index])

    def _label(self, index: int) -> int:
        name = self._class_of(self.files[index])
        return -1 if name is None else self.label_names.index(name)

    def _kind(self, index: int) -> str:
        return self._class_of(self.files[index]) or ""

    def _mesh(self, index: int, rng: np.random.Generator) -> trimesh.Trimesh:
        return load_mesh(self.files[index])

    def _sample(self, index: int) -> dict:
        item = super()._sample(index)
        for key in ("points", "sdf_points", "sdf"):   # cheap; a finite normalised mesh should never fail it
            if key in item:
                check_finite(item[key], self.files[index], f"{key} sampled from the mesh")
        return item

    def cache_key(self) -> dict:
        return {**super().cache_key(), "set": "meshfolder", "root": str(self.root.resolve()),
                "seed": self.seed, "skip_bad": self.skip_bad, "files": self._file_stats}

    def _cache_extras(self) -> dict:
        relative = lambda paths: [p.relative_to(self.root).as_posix() for p in paths]  # noqa: E731
        meta = {"files": relative(self.files), "non_watertight": relative(self.non_watertight),
                "skipped": [[p.relative_to(self.root).as_posix(), r] for p, r in self.skipped]}
        return {"meta": np.array(json.dumps(meta))}

    def _accept_cache(self, arrays: dict) -> None:
        if "meta" in arrays and not hasattr(self, "files"):     # only while constructing
            meta = json.loads(str(arrays["meta"]))
            self.files = [self.root / p for p in meta["files"]]
            self.non_watertight = [self.root / p for p in meta["non_watertight"]]
            self.skipped = [(self.root / p, r) for p, r in meta["skipped"]]
