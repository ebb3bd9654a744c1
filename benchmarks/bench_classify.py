"""
Classification overhead: a whole ``Classifier.classify_views`` call vs the bare encoder forward.

Both run on the same 10 depth views of one object (ViT-B-32, random weights, fp32, CPU), measured
interleaved in one run. Target (issue 2): ratio <= 1.15.

    .venv/bin/python benchmarks/bench_classify.py [--repeats 10] [--objects 1]
"""

import argparse
import statistics
import time

import torch

from opendlign_core.classifier import Classifier, preprocess_views
from opendlign_core.config import ModelConfig
from opendlign_core.model import create_depth_clip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--objects', type=int, default=1)
    parser.add_argument('--model-name', default='ViT-B-32')
    args = parser.parse_args()
    torch.manual_seed(0)
    model = create_depth_clip(ModelConfig(model_name=args.model_name))
    classifier = Classifier(model)
    labels = classifier.encode_labels([f'class {i}' for i in range(40)], templates='label')
    views = torch.rand(args.objects, 10, 224, 224)
    images = preprocess_views(views, model).flatten(0, 1)

    def bare() -> None:
        with torch.inference_mode():
            model.clip.visual(images)

    def whole() -> None:
        classifier.classify_views(views, labels)

    for fn in (bare, whole):
        fn()  # warm-up
    times = {'bare': [], 'whole': []}
    for _ in range(args.repeats):
        for name, fn in (('bare', bare), ('whole', whole)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    bare_ms = statistics.median(times['bare']) * 1e3
    whole_ms = statistics.median(times['whole']) * 1e3
    print(f'model {args.model_name} (random weights), {args.objects} object(s) x 10 views, '
          f'torch threads {torch.get_num_threads()}, {args.repeats} repeats (median)')
    print(f'bare image-encoder forward : {bare_ms:8.1f} ms')
    print(f'whole classify_views call  : {whole_ms:8.1f} ms')
    print(f'overhead ratio             : {whole_ms / bare_ms:8.3f}  (target <= 1.15)')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
