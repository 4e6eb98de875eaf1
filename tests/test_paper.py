from mmue_lib import paper


def test_published_numbers_are_transcribed():
    assert paper.table1("MEM-3", "flickr8k") == {"i2t_R@10": 4.1, "i2t_MedR": 304, "t2i_R@10": 3.7, "t2i_MedR": 250}
    assert paper.table1("Random", "coco")["i2t_MedR"] == 3419
    assert len(paper.TABLE1) == 18 and len(paper.TABLE2) == 9
    assert paper.TABLE2[("RN101", "flickr30k")] == {"clean i2t_MedR": 10, "MEM-3 i2t_MedR": 404,
                                                    "clean t2i_MedR": 17, "MEM-3 t2i_MedR": 306}


def test_semantic_fraction_and_face_tables_are_transcribed():
    assert paper.TABLE3[("semantic", "coco")] == {"i2t_MedR": 1356, "t2i_MedR": 1028}
    assert paper.FRACTION[("MEM-5", 0.9)] == {"i2t_MedR": 163, "t2i_MedR": 126}
    assert len(paper.FRACTION) == 8
    assert paper.TABLE4[("Fine-tuned", "RN101")] == {"i2t_R@10": 85.3, "i2t_MedR": 1}
    assert len(paper.TABLE4) == 12
