"""The shared file readers of the dataset loaders (prunekit/data/images.py), and how a reading
error from a loading worker reaches the user."""
import numpy as np
import pytest
from PIL import Image

from prunekit import PrunekitError
from prunekit.data.images import (normals_from_rgb, read_image_file, read_label_file,
                                  read_npy_file)
from prunekit.pipeline.data import evenly_spaced
from prunekit.errors import user_message


def test_sixteen_bit_pngs_keep_their_values(tmp_path):
    values = np.array([[0, 1, 300], [64500, 65535, 7]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "d.png")
    pixels = read_image_file(tmp_path / "d.png")
    assert pixels.dtype in (np.uint16, np.int32) and np.array_equal(pixels, values)


def test_palette_labels_give_their_indices_not_colours(tmp_path):
    labels = np.array([[0, 3], [17, 255]], dtype=np.uint8)
    image = Image.fromarray(labels, mode="P")
    image.putpalette([value for i in range(256) for value in (i, 255 - i, 7)])
    image.save(tmp_path / "s.png")
    assert np.array_equal(read_label_file(tmp_path / "s.png"), labels)
    assert read_image_file(tmp_path / "s.png").shape == (2, 2, 3)  # as an image: colours


@pytest.mark.parametrize("write, message", [
    (lambda p: p.write_bytes(b""), "cannot read array"),                       # empty
    (lambda p: p.write_bytes(np.lib.format.MAGIC_PREFIX + b"\x01\x00"), "cannot read array"),
    (lambda p: np.savez(open(p, "wb"), a=np.zeros(2)), "is an .npz archive"),
    (lambda p: p.mkdir(), "is not a file"),
    (lambda p: None, "missing array file"),
])
def test_bad_npy_files_are_one_line(tmp_path, write, message):
    path = tmp_path / "x.npy"
    write(path)
    with pytest.raises(PrunekitError, match=message) as error:
        read_npy_file(path)
    assert "\n" not in str(error.value)


def test_float_label_images_are_refused(tmp_path):
    Image.fromarray(np.zeros((2, 2), np.float32), mode="F").save(tmp_path / "s.tif")
    with pytest.raises(PrunekitError, match="holds float32 values; expected integer"):
        read_label_file(tmp_path / "s.tif")


def test_a_folder_that_cannot_be_entered_is_one_line(tmp_path, monkeypatch):
    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(type(tmp_path), "is_file", refuse)
    with pytest.raises(PrunekitError, match="cannot reach image file .*: Permission denied"):
        read_image_file(tmp_path / "locked" / "a.png")


def test_decoded_normals_are_unit_vectors_again():
    rng = np.random.default_rng(0)
    unit = rng.normal(size=(1000, 3))
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    stored = np.round((unit + 1) / 2 * 255).astype(np.uint8)
    normals = normals_from_rgb(stored)
    assert np.allclose(np.linalg.norm(normals, axis=1), 1, atol=1e-6)
    assert np.abs(normals - unit).max() < 0.01
    grey = normals_from_rgb(np.full((1, 3), 128, np.uint8))  # no normal: kept as decoded
    assert np.linalg.norm(grey) < 0.01


def test_a_worker_traceback_is_cut_to_its_message():
    wrapped = PrunekitError("Caught PrunekitError in DataLoader worker process 0.\n"
                            "Original Traceback (most recent call last):\n"
                            '  File "worker.py", line 349, in _worker_loop\n'
                            "prunekit.errors.PrunekitError: missing image file '/d/a.png'\n")
    assert user_message(wrapped) == "missing image file '/d/a.png'"
    two_lines = PrunekitError("Caught PrunekitError in DataLoader worker process 0.\n"
                              "Original Traceback (most recent call last):\n"
                              "prunekit.errors.PrunekitError: cannot read 'b.npy': one\n"
                              "two: detail\n")
    assert user_message(two_lines) == "cannot read 'b.npy': one two: detail"
    assert user_message(PrunekitError("plain:\nmessage")) == "plain: message"


def test_evenly_spaced_indices():
    assert evenly_spaced(10, 5) == [0, 2, 4, 6, 8]
    assert evenly_spaced(7, 3) == [0, 2, 4]
    assert evenly_spaced(4, 4) == [0, 1, 2, 3]
