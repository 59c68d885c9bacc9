"""Networks and heads: MobileNetV1, its layers, auxiliary heads, BatchNorm folding."""
