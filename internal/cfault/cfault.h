#ifndef RINGLINE_CFAULT_H
#define RINGLINE_CFAULT_H
/* Faults: writes through a NULL pointer in ringline_cfault_inner. */
void ringline_cfault_outer(void);
#endif
