"""The seed tutorial as a script, the baseline densa is measured against.

The notebook used torchvision.datasets.MNIST + ToTensor; torchvision does not import beside this
machine's torch, so this file reproduces exactly what they do per image (uint8 -> PIL image -> float
tensor in [0, 1]) on the same files, found by densa's loader. Everything after loading is the tutorial's
code unchanged: stack 70,000 tensors, DataLoader(batch_size=128, shuffle=True), the 784-512-10 MLP,
Adam 1e-3, 5 epochs, the quick look at test digit 0 and the test accuracy.
"""

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from densa.core.data import load_dataset


class MNIST:
    """torchvision.datasets.MNIST's __getitem__ with transforms.ToTensor()."""

    def __init__(self, images, labels):
        self.data, self.targets = images, labels

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        img = Image.fromarray(self.data[i].numpy(), mode="L")
        x = torch.from_numpy(np.array(img, np.uint8, copy=True)).view(28, 28, 1).permute(2, 0, 1).contiguous()
        return x.float().div(255), int(self.targets[i])


def main(epochs: int = 5):
    ds = load_dataset("mnist")
    train_ds = MNIST(ds.train_images, ds.train_labels)
    test_ds = MNIST(ds.test_images, ds.test_labels)

    train_images = torch.stack([train_ds[i][0] for i in range(len(train_ds))])
    train_labels = torch.tensor([train_ds[i][1] for i in range(len(train_ds))])
    test_images = torch.stack([test_ds[i][0] for i in range(len(test_ds))])
    test_labels = torch.tensor([test_ds[i][1] for i in range(len(test_ds))])
    train_images = train_images.view(60000, 28 * 28)
    test_images = test_images.view(10000, 28 * 28)

    train_loader = DataLoader(TensorDataset(train_images, train_labels), batch_size=128, shuffle=True)
    test_loader = DataLoader(TensorDataset(test_images, test_labels), batch_size=128, shuffle=False)

    model = nn.Sequential(nn.Linear(28 * 28, 512), nn.ReLU(), nn.Linear(512, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss()

    for epoch in range(epochs):
        model.train()
        correct, total, running_loss = 0, 0, 0.0
        for xb, yb in train_loader:
            logits = model(xb)
            loss = criterion(logits, yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            running_loss += loss.item() * xb.size(0)
            preds = logits.argmax(dim=1)
            correct += (preds == yb).sum().item()
            total += yb.size(0)
        print(f"Epoch {epoch + 1} - loss: {running_loss / total:.4f} - acc: {correct / total:.4f}")

    model.eval()
    with torch.no_grad():
        first_probs = F.softmax(model(test_images[:10]), dim=1)[0]
        print("predictions[0] =", first_probs.numpy())
        print("predictions[0].argmax() =", first_probs.argmax().item())
        print("test_labels[0] =", test_labels[0].item())

    correct, total = 0, 0
    with torch.no_grad():
        for xb, yb in test_loader:
            correct += (model(xb).argmax(dim=1) == yb).sum().item()
            total += yb.size(0)
    print(f"test_acc: {correct / total:.4f}")


if __name__ == "__main__":
    main()
