"""Token ids and action vocabulary shared by data, model and evaluation.

The placeholder ids are negative so they can never collide with a vocabulary id; the model
replaces them with visual features before anything reaches the embedding table.
"""

IGNORE_INDEX = -100
IMAGE_TOKEN_INDEX = -200
MEMORY_TOKEN_INDEX = -300

DEFAULT_IMAGE_TOKEN = "<image>"
DEFAULT_MEMORY_TOKEN = "<memory>"

# Action ids of the published annotations (actions[0] is a -1 placeholder for the first frame).
ACTION_STOP = 0
ACTION_FORWARD = 1
ACTION_LEFT = 2
ACTION_RIGHT = 3
PLACEHOLDER_ACTION = -1

ACTION_SYMBOLS: dict[int, str] = {
    ACTION_STOP: "STOP",
    ACTION_FORWARD: "↑",
    ACTION_LEFT: "←",
    ACTION_RIGHT: "→",
}
ACTION_NAMES: dict[int, str] = {
    ACTION_STOP: "STOP",
    ACTION_FORWARD: "MOVE_FORWARD",
    ACTION_LEFT: "TURN_LEFT",
    ACTION_RIGHT: "TURN_RIGHT",
}
