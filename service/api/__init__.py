"""HTTP routers; they validate, call the engine and shape answers, never touch tensors."""
