"""Python entry points of qcnn's compiled ops (torch.ops.qcnn.*)."""
