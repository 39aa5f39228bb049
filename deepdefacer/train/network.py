"""The 3D U-Net architecture (training only: a shipped .keras file carries its own graph)."""

from __future__ import annotations


def build_unet(size: int = 64, base_filters: int = 16, levels: int = 4, outputs: int = 2):
    """A plain 3D U-Net: two 3x3x3 convolutions a level, max-pool down, upsample + skip up.

    Output channels are independent sigmoids: face probability, brain probability.
    No normalisation layers: with batches of two, batch statistics are noise, and
    the input is already robustly normalised.
    """
    import keras
    from keras import layers

    def block(x, filters, name):
        for i in range(2):
            x = layers.Conv3D(filters, 3, padding="same", kernel_initializer="he_normal",
                              name=f"{name}_conv{i}")(x)
            x = layers.LeakyReLU(0.1, name=f"{name}_act{i}")(x)
        return x

    inputs = keras.Input((size, size, size, 1), name="head")
    skips, x = [], inputs
    for level in range(levels):
        x = block(x, base_filters * 2 ** level, f"down{level}")
        skips.append(x)
        x = layers.MaxPooling3D(2, name=f"pool{level}")(x)
    x = block(x, base_filters * 2 ** levels, "bottom")
    for level in reversed(range(levels)):
        x = layers.UpSampling3D(2, name=f"up{level}")(x)
        x = layers.Concatenate(name=f"skip{level}")([x, skips[level]])
        x = block(x, base_filters * 2 ** level, f"dec{level}")
    outputs_ = layers.Conv3D(outputs, 1, activation="sigmoid", name="face_brain")(x)
    return keras.Model(inputs, outputs_, name="deepdefacer_unet")
