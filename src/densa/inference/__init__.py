"""Using trained models: torch and ONNX predictors behind one interface, and image preparation."""
