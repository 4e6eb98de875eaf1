from mmue_lib import paper


def test_published_numbers_are_transcribed():
    assert paper.table1("MEM-3", "flickr8k") == {"i2t_R@10": 4.1, "i2t_MedR": 304, "t2i_R@10": 3.7, "t2i_MedR": 250}
    assert paper.table1("Random", "coco")["i2t_MedR"] == 3419
    assert len(paper.TABLE1) == 18 and len(paper.TABLE2) == 9
    assert paper.TABLE2[("RN101", "flickr30k")] == {"clean i2t_MedR": 10, "MEM-3 i2t_MedR": 404,
                                                    "clean t2i_MedR": 17, "MEM-3 t2i_MedR": 306}
