"""Image data: the offline shapes set, the offline MNIST subset, local ImageFolder / CIFAR, transforms."""

from .mnist import MNISTSubset, mnist_subset
from .shapes import SHAPE_CLASSES, ShapesDataset

__all__ = ["ShapesDataset", "SHAPE_CLASSES", "MNISTSubset", "mnist_subset"]
