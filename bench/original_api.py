"""A faithful re-creation of the original api.py approach, for bench/serve_bench.py only.

What it does, like the original: loads the model at import (the file must exist), builds the
torchvision transforms on every request, runs the model inside the `async` handler (so the
event loop is blocked while it computes), and answers {"prediction": label} with no error
handling. It loads the same checkpoint as the server, so the weights are identical.
"""

from __future__ import annotations

import io
import os

import torch
import torchvision.transforms as T
from fastapi import FastAPI, File, UploadFile
from PIL import Image

from greenr.model import checkpoint

ckpt = checkpoint.load(os.environ.get("MODEL_PATH", "models/stage-1.pth"))
model = ckpt.build("cpu")
classes = ckpt.spec.classes
spec = ckpt.spec.preprocessing

app = FastAPI()


@app.post("/predict")
async def predict(file: UploadFile = File(...)):  # noqa: B008 - as the original had it
    contents = await file.read()
    img = Image.open(io.BytesIO(contents)).convert("RGB")
    transform = T.Compose(
        [
            T.Resize(spec.image_size),
            T.CenterCrop(spec.image_size),
            T.ToTensor(),
            T.Normalize(spec.mean, spec.std),
        ]
    )
    x = transform(img).unsqueeze(0)
    with torch.no_grad():
        out = model(x)
    return {"prediction": classes[out.argmax(1).item()]}
