from pathlib import Path

import pytest
from conftest import write_folder

from imgtrain.config import DataConfig, SplitConfig
from imgtrain.data.pipeline import EpochPlan
from imgtrain.data.sources import discover
from imgtrain.data.split import apply_split, unit_hash
from imgtrain.errors import UserError


def test_folder_classes_sorted_and_labelled(image_folder: Path):
    cat = discover(DataConfig(path=str(image_folder)))
    assert cat.class_names == ["blue", "green", "red"]
    assert len(cat.examples) == 36
    for e in cat.examples:
        assert Path(e.path).parent.name == cat.class_names[e.label]
        assert e.split is None and e.weight == 1.0


def test_numeric_class_names_sort_as_numbers(tmp_path: Path):
    write_folder(tmp_path, per_class=1, classes={"2": (0, 0, 0), "10": (9, 9, 9), "1": (5, 5, 5)})
    assert discover(DataConfig(path=str(tmp_path))).class_names == ["1", "2", "10"]


def test_presplit_folder(tmp_path: Path):
    for split, n in (("train", 4), ("val", 2), ("test", 3)):
        write_folder(tmp_path / split, per_class=n)
    cat = discover(DataConfig(path=str(tmp_path)))
    assert {s: len(cat.split(s)) for s in ("train", "val", "test")} == {"train": 12, "val": 6, "test": 9}
    apply_split(cat, SplitConfig(), seed=1)  # keeps the given splits
    assert len(cat.split("val")) == 6


def test_presplit_without_val_carves_val_from_train(tmp_path: Path):
    write_folder(tmp_path / "train", per_class=40)
    write_folder(tmp_path / "test", per_class=5)
    cat = apply_split(discover(DataConfig(path=str(tmp_path))), SplitConfig(0.8, 0.1, 0.1), seed=0)
    assert len(cat.split("test")) == 15  # test untouched
    assert 4 <= len(cat.split("val")) <= 25
    assert all("test/" not in e.key for e in cat.split("val"))


def test_hash_split_is_stable_when_files_are_added(tmp_path: Path):
    write_folder(tmp_path, per_class=30)
    cat = apply_split(discover(DataConfig(path=str(tmp_path))), SplitConfig(), seed=5)
    before = {e.key: e.split for e in cat.examples}
    write_folder(tmp_path, per_class=60, seed=1)  # adds 30 new files per class (and rewrites the old ones)
    cat2 = apply_split(discover(DataConfig(path=str(tmp_path))), SplitConfig(), seed=5)
    after = {e.key: e.split for e in cat2.examples}
    assert len(after) == 180
    assert all(after[k] == v for k, v in before.items())
    # Roughly the requested fractions, per class (stratified in expectation).
    for label in range(3):
        train = sum(1 for e in cat2.examples if e.label == label and e.split == "train")
        assert 36 <= train <= 60


def test_split_depends_on_seed():
    keys = [f"c/{i}.png" for i in range(200)]
    assert [unit_hash(1, k) for k in keys] != [unit_hash(2, k) for k in keys]
    assert all(0.0 <= unit_hash(1, k) < 1.0 for k in keys)


def test_csv_manifest_with_strings_weights_and_vocabulary(tmp_path: Path):
    write_folder(tmp_path / "img", per_class=2)
    rows = [
        "path,label,weight",
        "img/red/red_000.png,stop,2.5",
        "img/green/green_000.png,go,",
        "img/blue/blue_000.png,wait,0.5",
        "img/red/red_001.png,stop,1",
    ]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    cat = discover(DataConfig(path=str(tmp_path / "m.csv"), label_vocabulary=["stop", "go", "wait"]))
    assert cat.class_names == ["stop", "go", "wait"]  # vocabulary order is the label order
    assert [e.label for e in cat.examples] == [0, 1, 2, 0]
    assert [e.weight for e in cat.examples] == [2.5, 1.0, 0.5, 1.0]
    assert cat.has_weights


def test_csv_without_header(tmp_path: Path):
    write_folder(tmp_path / "img", per_class=1)
    (tmp_path / "m.csv").write_text("img/red/red_000.png,r\nimg/blue/blue_000.png,b\n")
    cat = discover(DataConfig(path=str(tmp_path / "m.csv")))
    assert cat.class_names == ["b", "r"]


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("path,label\nimg/a.png,x,1,2,3\n", "line 2 has 5 fields"),
        ("path,label,weight\nimg/a.png,x,heavy\n", "weight 'heavy' is not a number"),
        ("path,label\nimg/a.png,\n", "empty path or label"),
        ("", "is empty"),
        ("path,label,colour\na.png,x,red\n", "unknown column 'colour'"),
    ],
)
def test_malformed_csv(tmp_path: Path, content, fragment):
    (tmp_path / "m.csv").write_text(content)
    with pytest.raises(UserError, match=fragment):
        discover(DataConfig(path=str(tmp_path / "m.csv")))


def test_label_missing_from_vocabulary(tmp_path: Path):
    (tmp_path / "m.csv").write_text("path,label\na.png,cat\nb.png,cow\n")
    with pytest.raises(UserError, match=r"label 'cow' at .*m.csv line 3 is not in data.label_vocabulary"):
        discover(DataConfig(path=str(tmp_path / "m.csv"), label_vocabulary=["cat", "dog"]))


def test_missing_and_empty_paths(tmp_path: Path):
    with pytest.raises(UserError, match="does not exist"):
        discover(DataConfig(path=str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="has no class subfolders"):
        discover(DataConfig(path=str(tmp_path / "empty")))
    with pytest.raises(UserError, match="no data given"):
        discover(DataConfig(path=None))


def test_every_source_kind_answers_the_same_questions(tmp_path):
    """A folder and its prepared TFRecords, through the one DataSource interface."""
    from imgtrain.config import Config
    from imgtrain.data import source
    from imgtrain.prepare import prepare_dataset

    data = write_folder(tmp_path / "img", per_class=9)
    folder_cfg = Config.load(None, [f"data.path={data}", "data.image_size=16"])
    prepare_dataset(folder_cfg, tmp_path / "rec", progress=False, log=lambda _m: None)
    files = source.get(folder_cfg, tmp_path / "run1", progress=False)
    records = source.get(Config.load(None, [f"data.path={tmp_path / 'rec'}", "data.image_size=16"]), tmp_path / "run2")
    assert type(files).__name__ == "FileSource" and type(records).__name__ == "RecordSource"
    assert files.class_names == records.class_names
    for split in ("train", "val", "test"):
        assert files.count(split) == records.count(split)
        assert sum(records.worker_counts(split, 1)) == records.count(split)
    assert sorted(files.train_labels()) == sorted(records.train_labels())
    plan = EpochPlan(seed=1, epoch=0, batch_size=4)
    a = [b[1].numpy().tolist() for b in files.train_dataset(folder_cfg.data, plan)]
    b = [b[1].numpy().tolist() for b in records.train_dataset(folder_cfg.data, plan)]
    # The same examples in as many batches (the prepared copy's order is its own: tests/test_prepare.py)
    assert len(a) == len(b) and sorted(sum(a, [])) == sorted(sum(b, []))
