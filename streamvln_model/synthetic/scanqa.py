"""Synthetic ScanQA / SQA3D scenes in the ScanNet posed-images layout (co-training task 2).

A scene is a folder `posed_images/<scene>/` holding one colour JPEG per frame, named by its
ScanNet frame index without padding (`0.jpg, 1.jpg, ..., 10.jpg`: the ScanNet SensReader's
`str(frame) + '.jpg'`, github.com/ScanNet/ScanNet `SensReader/python/SensorData.py`), so a reader
that sorts names as strings gets the order wrong; next to each frame its camera-to-world pose
`<frame>.txt` (4x4, one row per line) and once per scene `intrinsic.txt` (4x4), as mmdetection3d's
and EmbodiedScan's `posed_images` folders have. StreamVLN (arXiv 2507.05240) reads the jpgs only:
every 10th frame, then `frames_upbound` of those evenly. The JSON records are LLaVA-style
(`id`, `video` = `posed_images/<scene>` relative to `--scanqa_video_folder`, `conversations`) with
a `<video>` placeholder in the human turn, which the loader expands to one `<image>` per frame.

Each scene is a room with coloured walls and 1-3 coloured objects of one kind; every question
asks about those colours or that count, which every frame shows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamvln_model.files import write_json_atomically
from streamvln_model.synthetic.common import (
    COLOUR_NAMES,
    COLOURS,
    add_noise,
    canvas,
    check_arguments,
    dataset_folder,
    item_rng,
    number_word,
    save_jpeg,
)

SCANQA_JSON = "scanqa_train.json"
SQA3D_JSON = "sqa3d_train.json"
POSED_IMAGES = "posed_images"
INTRINSIC_FILE = "intrinsic.txt"
# Real ScanNet scene ids stop below 1000 (scene0000_00..scene0806_00); ours start at 9000 so a
# synthetic scene is never mistaken for, or written over, a real one.
FIRST_SCENE_ID = 9000
MAX_SCENES = 1000
MAX_OBJECTS = 3
SQA3D_FIRST_ID = 220602000000  # SQA3D question ids are 12-digit integers
SCANQA_SUFFIX = "\nAnswer the question using a single word or phrase."
OBJECTS = ("chair", "table", "cabinet", "sofa", "lamp", "box", "trash can", "pillow")
QUESTION_KINDS = ("object_colour", "wall_colour", "object_count")
SQA3D_QUESTION_TYPES = {"object_colour": "what", "wall_colour": "what", "object_count": "how"}


@dataclass(frozen=True)
class Scene:
    """What a scene shows: every answer about it is derived from these four facts."""

    name: str
    wall: str
    obj: str
    colour: str
    count: int


@dataclass(frozen=True)
class ScanQASummary:
    out: Path
    scenes: int
    frames_per_scene: int
    scanqa_questions: int
    sqa3d_questions: int

    @property
    def scanqa_json(self) -> Path:
        return self.out / SCANQA_JSON

    @property
    def sqa3d_json(self) -> Path:
        return self.out / SQA3D_JSON


def scene_name(index: int) -> str:
    return f"scene{FIRST_SCENE_ID + index:04d}_00"


def frame_stem(frame: int, name_width: int) -> str:
    """`12` as ScanNet's SensReader names it (name_width 0), or `00012` with name_width 5."""
    return f"{frame:0{name_width}d}" if name_width else str(frame)


def _scene(index: int, rng: np.random.Generator) -> Scene:
    wall, colour = (str(name) for name in rng.choice(COLOUR_NAMES, size=2, replace=False))
    obj = str(rng.choice(OBJECTS))
    return Scene(scene_name(index), wall, obj, colour, int(rng.integers(1, MAX_OBJECTS + 1)))


def render_view(scene: Scene, frame: int, frames: int, size: tuple[int, int], rng: np.random.Generator):
    """The room seen at `frame`: walls, and `count` object boxes that sway as the camera turns.

    Boxes stay whole and apart in every view, so any single frame shows the count and colours.
    """
    width, height = size
    pixels = canvas(scene.wall, size)
    slot = width / scene.count
    box = max(1, int(slot / 3))
    sway = int(slot / 6 * math.sin(2 * math.pi * frame / max(frames, 1)))
    top, bottom = height // 3, max(height // 3 + 1, height - height // 6)
    for index in range(scene.count):
        left = int(slot * index + slot / 2 - box / 2) + sway
        pixels[top:bottom, max(left, 0) : min(left + box, width)] = COLOURS[scene.colour]
    return add_noise(pixels, rng)


def camera_pose(frame: int, frames: int, centre: np.ndarray) -> np.ndarray:
    """Camera-to-world 4x4: the camera turns once around the vertical axis at the room centre."""
    yaw = 2 * math.pi * frame / max(frames, 1)
    pose = np.eye(4)
    pose[:3, :3] = [
        [math.cos(yaw), -math.sin(yaw), 0.0],
        [math.sin(yaw), math.cos(yaw), 0.0],
        [0.0, 0.0, 1.0],
    ]
    pose[:3, 3] = centre
    return pose


def intrinsic_matrix(size: tuple[int, int]) -> np.ndarray:
    """A pinhole 4x4 for the frame size (ScanNet stores intrinsics padded to 4x4)."""
    width, height = size
    matrix = np.eye(4)
    matrix[0, 0] = matrix[1, 1] = 1.2 * width
    matrix[0, 2], matrix[1, 2] = width / 2, height / 2
    return matrix


def matrix_text(matrix: np.ndarray) -> str:
    """Rows of `%f` values, one row per line, as ScanNet's exporter writes them."""
    return "".join(" ".join(f"{value:f}" for value in row) + "\n" for row in matrix)


def write_scene(
    folder: Path, scene: Scene, frames: int, stride: int, name_width: int, size, rng: np.random.Generator
) -> None:
    """Frames `0, stride, 2*stride, ...` as jpg + pose txt, and the scene's intrinsic.txt."""
    folder.mkdir(parents=True)
    centre = rng.uniform(0.5, 5.0, size=3)
    for step in range(frames):
        stem = frame_stem(step * stride, name_width)
        save_jpeg(folder / f"{stem}.jpg", render_view(scene, step, frames, size, rng))
        (folder / f"{stem}.txt").write_text(matrix_text(camera_pose(step, frames, centre)))
    (folder / INTRINSIC_FILE).write_text(matrix_text(intrinsic_matrix(size)))


def _plural(obj: str) -> str:
    return f"{obj}es" if obj.endswith("x") else f"{obj}s"


def scanqa_question(scene: Scene, kind: str) -> tuple[str, str]:
    """(question, answer) in ScanQA's style: a free question, a short lower-case answer."""
    if kind == "object_colour":
        noun, verb = (scene.obj, "is") if scene.count == 1 else (_plural(scene.obj), "are")
        return f"What color {verb} the {noun} in the room?", scene.colour
    if kind == "wall_colour":
        return "What color are the walls of the room?", scene.wall
    return f"How many {_plural(scene.obj)} are in the room?", number_word(scene.count)


def sqa3d_question(scene: Scene, kind: str) -> tuple[str, str]:
    """(situation + question, answer) in SQA3D's style: the agent's situation comes first."""
    question, answer = scanqa_question(scene, kind)
    return f"I am standing in the middle of the room and turning around slowly. {question}", answer


def _record(scene: Scene, question_id: str | int, question: str, answer: str, metadata: dict) -> dict:
    """One LLaVA-style record about `scene`, as ScanQA and SQA3D records share it."""
    return {
        "id": question_id,
        "video": f"{POSED_IMAGES}/{scene.name}",
        "conversations": [
            {"from": "human", "value": f"<video>\n{question}{SCANQA_SUFFIX}"},
            {"from": "gpt", "value": answer},
        ],
        "metadata": metadata,
    }


def _scanqa_record(scene: Scene, kind: str, number: int) -> dict:
    question, answer = scanqa_question(scene, kind)
    metadata = {"dataset": "scanqa", "scene_id": scene.name, "answers": [answer], "object_names": [scene.obj]}
    return _record(scene, f"train-{scene.name[:9]}-{number}", question, answer, metadata)


def _sqa3d_record(scene: Scene, kind: str, question_id: int) -> dict:
    question, answer = sqa3d_question(scene, kind)
    metadata = {"dataset": "sqa3d", "question_type": SQA3D_QUESTION_TYPES[kind]}
    return _record(scene, question_id, question, answer, metadata)


def _check(
    scenes: int, frames_per_scene: int, questions: int, stride: int, name_width: int, seed: int, size
) -> tuple[int, int]:
    size = check_arguments(seed, size, scenes=scenes, frames_per_scene=frames_per_scene, frame_stride=stride)
    if scenes > MAX_SCENES:
        raise ValueError(f"scenes must be <= {MAX_SCENES} (synthetic scene ids are 9000-9999), got {scenes}")
    if not 1 <= questions <= len(QUESTION_KINDS):
        raise ValueError(f"questions_per_scene must be between 1 and {len(QUESTION_KINDS)}, got {questions}")
    if name_width < 0:
        raise ValueError(f"name_width must be >= 0 (0: ScanNet's unpadded names), got {name_width}")
    return size


def write_scanqa(
    out: Path,
    scenes: int = 3,
    frames_per_scene: int = 40,
    seed: int = 0,
    size: tuple[int, int] = (64, 48),
    questions_per_scene: int = 3,
    frame_stride: int = 1,
    name_width: int = 0,
    overwrite: bool = False,
) -> ScanQASummary:
    """Write `scenes` posed-image scenes and a ScanQA and an SQA3D JSON about them under `out`.

    Frames are named by ScanNet frame index `0, frame_stride, 2*frame_stride, ...` (SensReader's
    `frame_skip`), unpadded unless `name_width` (5 for mmdetection3d-style `00010.jpg`).
    Deterministic for a given seed; `--scanqa_video_folder` is `out`.
    """
    size = _check(scenes, frames_per_scene, questions_per_scene, frame_stride, name_width, seed, size)
    scanqa, sqa3d = [], []
    with dataset_folder(Path(out), overwrite) as partial:
        for index in range(scenes):
            rng = item_rng(seed, index)
            scene = _scene(index, rng)
            folder = partial / POSED_IMAGES / scene.name
            write_scene(folder, scene, frames_per_scene, frame_stride, name_width, size, rng)
            kinds = [
                QUESTION_KINDS[int(k)] for k in rng.permutation(len(QUESTION_KINDS))[:questions_per_scene]
            ]
            scanqa += [_scanqa_record(scene, kind, number) for number, kind in enumerate(kinds)]
            sqa3d += [
                _sqa3d_record(scene, kind, SQA3D_FIRST_ID + len(sqa3d) + n) for n, kind in enumerate(kinds)
            ]
        write_json_atomically(partial / SQA3D_JSON, sqa3d)
        write_json_atomically(partial / SCANQA_JSON, scanqa)
    return ScanQASummary(Path(out), scenes, frames_per_scene, len(scanqa), len(sqa3d))
