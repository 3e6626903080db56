"""Writing an exported model: one ONNX file with the weights embedded under protobuf's 2 GB cap,
a ``.onnx.data`` side file above it (shared by the export and the INT8 quantization)."""

from retinamask.core.fileio import atomic_write_bytes

EMBED_LIMIT_BYTES = 1_900_000_000  # protobuf's 2 GB cap, with room for the graph itself


def save_onnx(proto, path):
    """Write the model ``proto`` at ``path`` (a Path) atomically; returns the external data file
    name, or None when the weights are embedded."""
    import onnx

    weight_bytes = sum(len(t.raw_data) for t in proto.graph.initializer)
    if weight_bytes < EMBED_LIMIT_BYTES:
        atomic_write_bytes(path, proto.SerializeToString())
        return None
    # Over protobuf's 2 GB cap the weights must go to a side file: written first, then the
    # graph is renamed into place.
    location = f"{path.name}.data"
    tmp = path.with_name(f".{path.name}.tmp")
    onnx.save_model(proto, tmp, save_as_external_data=True, all_tensors_to_one_file=True, location=location)
    tmp.replace(path)
    return location
