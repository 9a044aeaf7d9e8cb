"""peftc.data: loaders for the real data sets (WordNet glosses, Fashion-MNIST) and minibatch order."""
from .batching import BatchSampler, epoch_permutation, num_rows, take
from .fashion_mnist import load_fashion_mnist
from .wordnet import WordNetGlosses, load_wordnet_glosses, stratified_split_indices

__all__ = ["BatchSampler", "WordNetGlosses", "epoch_permutation", "load_fashion_mnist", "load_wordnet_glosses",
           "num_rows", "stratified_split_indices", "take"]
