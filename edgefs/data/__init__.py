"""Data sets for meta-training and evaluation (workstation side): the glyph benchmark rendered from
fonts, the colour domains built from Debian and npm packages (:mod:`edgefs.data.domains`), image
folders, episodes and augmentation. The device never imports this package."""
