"""What an export directory (``bnnkit export RUN_DIR --out DIR``) holds, by file name.

    DIR/manifest.json, DIR/model.safetensors   the packed artifact (docs/format.md)
    DIR/trained/config.json, model.safetensors the run's best model, the reference of validation
    DIR/model.onnx                             the ONNX graph (``--onnx``)
"""

PACKED_MANIFEST = "manifest.json"
TRAINED_DIR = "trained"
ONNX_FILE = "model.onnx"
RUN_FILES = ("config.json", "model.safetensors", "run-manifest.json")  # what load_run reads and checks
