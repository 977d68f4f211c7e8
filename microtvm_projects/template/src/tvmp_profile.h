/* Profile builds (make PROFILE=1): model.c is compiled with -include tvmp_profile.h, so each kernel call in
   tvmp_run is bracketed by counter readings (model.c defines the two hooks empty otherwise). */
#ifndef TVMP_PROFILE_H
#define TVMP_PROFILE_H
#include <stdint.h>
#ifndef TVMP_PROFILE
#define TVMP_PROFILE 0
#endif
#if TVMP_PROFILE
void tvmp_prof_begin(uint32_t index);
void tvmp_prof_end(uint32_t index, const char *name);
#define TVMP_KERNEL_BEGIN(index) tvmp_prof_begin(index)
#define TVMP_KERNEL_END(index, name) tvmp_prof_end(index, name)
#endif
#endif
